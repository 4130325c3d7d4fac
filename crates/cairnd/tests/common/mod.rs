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

/// Runs a shell command line (namespaces, routes, nftables); true if it succeeded.
pub fn sh(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", command])
        .status()
        .is_ok_and(|s| s.success())
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
    /// Its standard input, when started to take commands there.
    commands: Option<std::process::ChildStdin>,
}

impl Running {
    /// Starts `cairnd` with `args`, inside `ns` if given.
    pub fn start(ns: Option<&str>, profile: &Path, args: &[&str]) -> Self {
        Self::spawn(cairnd(ns, profile, args), false)
    }

    /// Starts `cairnd` with `args` (which should include `--stdin`), taking commands
    /// from [`Running::command`].
    pub fn start_with_commands(profile: &Path, args: &[&str]) -> Self {
        Self::spawn(cairnd(None, profile, args), true)
    }

    /// [`Running::start_with_commands`] inside the network namespace `ns`.
    pub fn start_in_with_commands(ns: &str, profile: &Path, args: &[&str]) -> Self {
        Self::spawn(cairnd(Some(ns), profile, args), true)
    }

    fn spawn(mut command: Command, with_stdin: bool) -> Self {
        if with_stdin {
            command.stdin(Stdio::piped());
        }
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            commands: child.stdin.take(),
            child,
            lines,
            seen: Default::default(),
        }
    }

    /// Writes a command line to the node's standard input without waiting for the
    /// answer; false if the node is gone.
    pub fn write_command(&mut self, line: &str) -> bool {
        use std::io::Write;
        let stdin = self.commands.as_mut().expect("started with commands");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).is_ok()
    }

    /// Runs a command and returns the lines of its answer (without the final `ok`);
    /// `None` if the node answered `error` or stopped answering within `timeout`.
    /// Lines about other things (arrivals, addresses) that come meanwhile are kept.
    pub fn command(&mut self, line: &str, timeout: Duration) -> Option<Vec<String>> {
        let verb = line.split(' ').next().unwrap_or_default().to_owned();
        if !self.write_command(line) {
            return None;
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut answer = Vec::new();
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            if line == format!("ok {verb}") {
                return Some(answer);
            }
            if line.starts_with("error ") {
                return None;
            }
            if ["queued ", "history ", "outbox "].iter().any(|p| line.starts_with(p)) {
                answer.push(line);
            } else {
                self.seen.borrow_mut().push(line);
            }
        }
    }

    /// Every line that has arrived so far, without waiting.
    pub fn drain(&self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            self.seen.borrow_mut().push(line.clone());
            lines.push(line);
        }
        lines
    }

    /// Kills the node at once (SIGKILL): no hand-over, nothing flushed.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    /// Every line read so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.borrow().clone()
    }

    /// Whether any line read so far starts with `prefix`.
    pub fn saw(&self, prefix: &str) -> bool {
        self.seen.borrow().iter().any(|l| l.starts_with(prefix))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Its standard input closes first: a node reading commands is not left waiting.
        self.commands.take();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
