//! Child processes of the binary under test: stdout read up to a ready line, stderr
//! to a log file; SIGTERM then SIGKILL on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Process {
    pub child: Child,
    pub log: PathBuf,
    pub first_line: String,
}

impl Process {
    /// Spawns and waits for a stdout line starting with `ready_prefix`.
    pub fn spawn(mut command: Command, log: PathBuf, ready_prefix: &str) -> Self {
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("locality binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first_line = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with(ready_prefix) => break line,
                Some(_) => continue,
                None => panic!(
                    "process exited before printing {ready_prefix:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            log,
            first_line,
        }
    }

    /// What follows `prefix` on the ready line, e.g. the address it listens on.
    pub fn announced(&self, prefix: &str) -> String {
        let rest = self.first_line.trim_start_matches(prefix);
        rest.split([',', ' '])
            .next()
            .unwrap_or(rest)
            .trim()
            .to_string()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        // SAFETY: signalling our own child process by its pid.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines of the log, for a failing test's output.
    pub fn print_tail(&self, lines: usize) {
        let text = self.log_text();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        eprintln!("--- last lines of {}:", self.log.display());
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A failing test shows what the process said.
        if std::thread::panicking() {
            self.print_tail(40);
        }
        if self.terminate(Duration::from_secs(10)).is_none() {
            self.kill_now();
        }
    }
}

/// Waits until `base_url/readyz` answers 200.
pub async fn wait_ready(http: &reqwest::Client, base_url: &str, process: &Process) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http
            .get(format!("{base_url}/readyz"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base_url} never became ready; log:\n{}",
            process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port no one listens on, for a process that is told its address before it starts.
///
/// Picked below the kernel's ephemeral range (32768 and up here), so that no outgoing
/// connection of this or another test takes it as its local port between the pick and
/// the child's bind, and at random within it, so that parallel test processes do not
/// pick the same one; a port handed out once in this process is not handed out again.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::Mutex;
    const RANGE: std::ops::Range<u16> = 22_000..32_000;
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let seed = RandomState::new();
    let mut handed_out = HANDED_OUT.lock().unwrap();
    for attempt in 0u64.. {
        let span = u64::from(RANGE.end - RANGE.start);
        let port = RANGE.start + (seed.hash_one(attempt) % span) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
        assert!(attempt < 10_000, "no free port in {RANGE:?}");
    }
    unreachable!()
}

/// Runs a command that should exit at once; kills it (and fails) if it is still running
/// after 30 s, e.g. because it started and went on to wait for a broker.
pub fn run_briefly(command: &mut std::process::Command) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "still running after 30 s: it started instead of refusing\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
