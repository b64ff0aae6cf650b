//! Running a binary the way a person sees its errors: on a terminal (a pseudo-terminal from
//! util-linux `script`, which every Debian system has) or with standard error on a pipe, with
//! `RUST_BACKTRACE`, `NO_COLOR` and friends set as a developer's shell would have them.
//!
//! [`assert_plain_user_error`] is the one check every Event Catcher binary passes for a user
//! error: colour only on a terminal without `NO_COLOR`, never a backtrace.

use std::path::Path;
use std::process::{Command, Stdio};

/// The ANSI escape that starts every colour (and every other terminal control sequence).
const ESC: &str = "\x1b[";

/// What a run printed on its standard error (on a pipe) or its terminal (on a pty).
#[derive(Debug)]
pub struct Printed {
    /// Standard error, or everything the terminal showed.
    pub text: String,
    /// Whether the process exited with status 0.
    pub success: bool,
}

/// Runs `program args` with standard error on a pipe (standard input empty), `env` set and
/// `RUST_LOG` removed.
pub fn run_piped(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Printed {
    let out = Command::new(program)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    Printed {
        text: String::from_utf8_lossy(&out.stderr).into_owned(),
        success: out.status.success(),
    }
}

/// Runs `program args` on a pseudo-terminal (all three standard streams), `env` set and
/// `RUST_LOG` removed; returns what the terminal showed.
pub fn run_on_terminal(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Printed {
    let mut words = vec![quote(&program.display().to_string())];
    words.extend(args.iter().map(|a| quote(a)));
    let out = Command::new("script")
        // -q: no start/done lines; -e: its status is the child's; -c: the command; the
        // typescript goes nowhere (the output is read from script's own standard output).
        .args(["-q", "-e", "-c", &words.join(" "), "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `script` (util-linux, part of every Debian system): {e}")
        });
    Printed {
        text: String::from_utf8_lossy(&out.stdout).into_owned(),
        success: out.status.success(),
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `program args`, which must fail with a user error whose message contains `expected`,
/// four ways — on a pipe and on a terminal, each with `RUST_BACKTRACE=1`, and on a terminal
/// with `NO_COLOR=1` — and checks what a person sees: the message each time, colour only on
/// a terminal without `NO_COLOR`, and never a backtrace (those are for panics).
pub fn assert_plain_user_error(program: &Path, args: &[&str], expected: &str) {
    let name = program.file_name().map_or_else(
        || program.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let runs = [
        (
            "stderr on a pipe",
            run_piped(program, args, &[("RUST_BACKTRACE", "1")]),
        ),
        (
            "on a terminal",
            run_on_terminal(program, args, &[("RUST_BACKTRACE", "1")]),
        ),
        (
            "on a terminal with NO_COLOR=1",
            run_on_terminal(program, args, &[("RUST_BACKTRACE", "1"), ("NO_COLOR", "1")]),
        ),
    ];
    for (how, printed) in &runs {
        let text = &printed.text;
        assert!(
            !printed.success,
            "{name} {how}: a user error exits non-zero"
        );
        assert!(
            text.contains(expected),
            "{name} {how}: the message names the problem ({expected:?}):\n{text}"
        );
        let lower = text.to_lowercase();
        assert!(
            !lower.contains("backtrace") && !text.contains("std::rt::lang_start"),
            "{name} {how}: RUST_BACKTRACE=1 shows no backtrace for a user error:\n{text}"
        );
        let coloured = text.contains(ESC);
        let want = *how == "on a terminal";
        assert_eq!(
            coloured,
            want,
            "{name} {how}: colour {} expected:\n{text:?}",
            if want { "is" } else { "is not" }
        );
    }
}
