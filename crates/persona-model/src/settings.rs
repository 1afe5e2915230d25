//! Reading settings files strictly: TOML into a typed struct, every key the
//! struct does not read an error naming it, parse errors on one line.
//!
//! serde's `deny_unknown_fields` cannot see through `#[serde(flatten)]`
//! (the sampling numbers that several settings share are flattened in), so
//! strictness here is checked another way: the struct, read from the file,
//! is written back to TOML, and any key of the file that does not come
//! back was not read.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result};

/// Reads `path` as a `T`, refusing keys `T` does not read.
pub fn load<T: DeserializeOwned + Serialize>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| bad(path, one_line(&e)))?;
    from_table(table).map_err(|reason| bad(path, reason))
}

/// Reads a TOML table (a part of a larger file) as a `T`, refusing keys `T`
/// does not read; the error is the reason alone.
pub fn from_table<T: DeserializeOwned + Serialize>(
    table: toml::Table,
) -> std::result::Result<T, String> {
    let value: T = table.clone().try_into().map_err(|e| one_line(&e))?;
    let back = toml::Table::try_from(&value).map_err(|e| one_line(&e))?;
    match unread_key(&table, &back, "") {
        Some(key) => Err(format!("unknown key `{key}`")),
        None => Ok(value),
    }
}

/// The first key of `given` (dotted path) that `read` lacks.
fn unread_key(given: &toml::Table, read: &toml::Table, prefix: &str) -> Option<String> {
    for (k, v) in given {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (v, read.get(k)) {
            (_, None) => return Some(path),
            (toml::Value::Table(g), Some(toml::Value::Table(r))) => {
                if let Some(found) = unread_key(g, r, &path) {
                    return Some(found);
                }
            }
            (toml::Value::Array(g), Some(toml::Value::Array(r))) => {
                for (i, (g, r)) in g.iter().zip(r).enumerate() {
                    if let (toml::Value::Table(g), toml::Value::Table(r)) = (g, r)
                        && let Some(found) = unread_key(g, r, &format!("{path}[{i}]"))
                    {
                        return Some(found);
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// A TOML error on one line (the crate's message draws the offending line
/// over several).
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with('|')
                && !l.chars().next().is_some_and(|c| c.is_ascii_digit())
        })
        .collect();
    lines.join(" ")
}

fn bad(path: &Path, reason: String) -> ModelError {
    ModelError::Config {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Inner {
        a: u32,
        b: f32,
    }

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Outer {
        name: String,
        #[serde(flatten)]
        inner: Inner,
        list: Vec<Inner>,
    }

    #[test]
    fn unknown_keys_are_refused_also_through_flatten() {
        let ok: toml::Table =
            toml::from_str("name = 'x'\na = 1\nb = 2.0\nlist = [{a = 1, b = 1.0}]").unwrap();
        let v: Outer = from_table(ok).unwrap();
        assert_eq!(v.inner, Inner { a: 1, b: 2.0 });
        for (text, key) in [
            ("name = 'x'\na = 1\nb = 2.0\nc = 3\nlist = []", "c"),
            (
                "name = 'x'\na = 1\nb = 2.0\nlist = [{a = 1, b = 1.0, z = 0}]",
                "list[0].z",
            ),
        ] {
            let t: toml::Table = toml::from_str(text).unwrap();
            let e = from_table::<Outer>(t).unwrap_err();
            assert_eq!(e, format!("unknown key `{key}`"));
        }
        let t: toml::Table = toml::from_str("name = 'x'\na = 1\nlist = []").unwrap();
        assert!(
            from_table::<Outer>(t)
                .unwrap_err()
                .contains("missing field `b`")
        );
    }
}
