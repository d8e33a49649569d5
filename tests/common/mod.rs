//! Helpers shared by the integration tests that drive the built `reglab` binary.

use std::process::{Command, Output};

/// The binary under test, with RUST_LOG cleared so its stderr is what a user sees.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reglab"));
    c.env_remove("RUST_LOG");
    c
}

/// stdout and stderr together, for assertion messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
