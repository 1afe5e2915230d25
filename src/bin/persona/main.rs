//! `persona`: the command-line front end. One file per command under
//! `commands/`, each an argument struct and a short `exec`; the work is in
//! the library crates.

use std::process::ExitCode;

use clap::Parser;

mod alloc;
mod args;
mod commands;
mod progress;

#[derive(Parser)]
#[command(
    name = "persona",
    version,
    about = "Monitor and control the persona of language models"
)]
struct Cli {
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    alloc::keep_freed_memory();
    // Like other Unix tools, stop quietly when a reader closes the pipe
    // (`persona vector info ... | head`) instead of panicking in `println!`.
    // SAFETY: restoring the default action of a signal before any thread
    // starts; no handler is installed.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match commands::exec(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the sources wrote (a TOML parse error
            // draws the offending line over several).
            let text = format!("{e:#}");
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("error: {}", line.join(" "));
            ExitCode::from(2)
        }
    }
}
