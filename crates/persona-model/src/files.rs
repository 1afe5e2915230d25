//! Writing outputs safely: every file appears whole or not at all, a
//! failed write leaves nothing behind, and nothing is written through a
//! symbolic link planted where an output goes (a run folder's
//! `metrics.jsonl` linked to a file elsewhere must not truncate that file).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// The temporary sibling an atomic write goes through: `.NAME.tmp`.
fn temporary(path: &Path) -> PathBuf {
    path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out")
    ))
}

/// Opens a new file for writing; fails on an existing file or a symbolic
/// link at `path` (it is never followed).
fn create_new(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// Removes a file or symbolic link at `path` (not what a link points to);
/// nothing there is fine.
fn remove_entry(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ModelError::write(path, e)),
        _ => Ok(()),
    }
}

/// Writes `path` atomically: `write` fills a fresh temporary sibling
/// (`.NAME.tmp`, created without following links), which then replaces
/// `path` by rename (a link at `path` is replaced, not followed). On any
/// failure the temporary file is removed and `path` is left as it was.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path, File) -> Result<()>) -> Result<()> {
    let tmp = temporary(path);
    remove_entry(&tmp)?;
    let written = create_new(&tmp)
        .map_err(|e| ModelError::write(&tmp, e))
        .and_then(|f| write(&tmp, f))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| ModelError::write(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes `bytes` to `path` atomically (see [`write_atomic_with`]) and
/// syncs them, so a crash leaves the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp, mut f| {
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| ModelError::write(tmp, e))
    })
}

/// Opens `path` for appending (created when missing), refusing a symbolic
/// link there.
pub fn open_append(path: &Path) -> Result<File> {
    let mut o = OpenOptions::new();
    o.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path).map_err(|e| ModelError::write(path, e))
}

/// Refuses a symbolic link at `path` (an output folder or file must be the
/// folder's own, not a link to somewhere else); nothing there is fine.
pub fn refuse_symlink(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(ModelError::Input(format!(
            "{} is a symbolic link; outputs are never written through links (remove it)",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Creates `dir` (and its parents) when missing and checks that a file can
/// be created in it, so work that ends in a write into `dir` fails before
/// it starts rather than after.
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::write(dir, e))?;
    let probe = dir.join(format!(".persona-write-check-{}", std::process::id()));
    remove_entry(&probe)?;
    create_new(&probe).map_err(|e| ModelError::write(dir, e))?;
    remove_entry(&probe)
}

/// [`check_writable_dir`] for the folder a file `path` will be written in.
pub fn check_writable_file(path: &Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => check_writable_dir(dir),
        None => check_writable_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_a_planted_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.txt");
        std::fs::write(&outside, "keep me").unwrap();
        let out = dir.path().join("out.txt");
        std::os::unix::fs::symlink(&outside, &out).unwrap();
        std::os::unix::fs::symlink(&outside, temporary(&out)).unwrap();
        write_atomic(&out, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
        assert!(
            !std::fs::symlink_metadata(&out)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(open_append(&dir.path().join("link")).is_ok());
        std::os::unix::fs::symlink(&outside, dir.path().join("link2")).unwrap();
        assert!(open_append(&dir.path().join("link2")).is_err());
        assert!(refuse_symlink(&dir.path().join("link2")).is_err());
        assert!(refuse_symlink(&outside).is_ok());
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.bin");
        let e = write_atomic_with(&out, |tmp, _| {
            Err(ModelError::write(tmp, std::io::Error::other("disk full")))
        })
        .unwrap_err();
        assert!(e.to_string().contains("cannot write"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn unwritable_outputs_are_reported_as_writes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        // A folder below a file cannot be made, by root either.
        let e = check_writable_dir(&file.join("sub"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot write"), "{e}");
        let e = write_atomic(&file.join("out"), b"x")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot write"), "{e}");
        check_writable_dir(&dir.path().join("new/sub")).unwrap();
    }
}
