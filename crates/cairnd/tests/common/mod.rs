//! Running `cairnd` processes from tests: one-shot commands, and nodes whose output
//! lines are read as they come, stopped with SIGTERM.

// Each test file uses a different part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CAIRND: &str = env!("CARGO_BIN_EXE_cairnd");

/// `cairnd` for `profile` with a quick-to-type passphrase, optionally inside a network
/// namespace, with no mDNS and the given arguments.
pub fn cairnd(ns: Option<&str>, profile: &Path, args: &[&str]) -> Command {
    let mut command = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, CAIRND]);
            c
        }
        None => Command::new(CAIRND),
    };
    command
        .arg("--profile-dir")
        .arg(profile)
        .arg("--no-mdns")
        .args(args)
        .env("CAIRND_PASSPHRASE", "correct horse battery staple");
    command
}

/// Runs a one-shot command and returns what it printed.
pub fn run(profile: &Path, args: &[&str]) -> String {
    let output = cairnd(None, profile, args).output().unwrap();
    assert!(
        output.status.success(),
        "cairnd {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Creates a profile and returns its account id.
pub fn init(profile: &Path, name: &str) -> String {
    run(profile, &["init", "--name", name])
        .trim()
        .strip_prefix("account ")
        .unwrap()
        .to_owned()
}

/// A running `cairnd` whose stdout lines arrive on a channel; stopped with SIGTERM
/// (which reaches it through `ip netns exec`, as that execs it).
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    seen: std::cell::RefCell<Vec<String>>,
}

impl Running {
    /// Starts `cairnd` with `args`, inside `ns` if given.
    pub fn start(ns: Option<&str>, profile: &Path, args: &[&str]) -> Self {
        let mut child = cairnd(ns, profile, args).stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Default::default(),
        }
    }

    /// The rest of the next line that starts with `prefix`.
    pub fn line_starting(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no {prefix:?} line"));
            self.seen.borrow_mut().push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }
}

impl Running {
    /// Whether any line read so far starts with `prefix`.
    pub fn saw(&self, prefix: &str) -> bool {
        self.seen.borrow().iter().any(|l| l.starts_with(prefix))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
