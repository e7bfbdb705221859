//! Child processes with their log in `<dir>/logs/NAME.log` and pid in
//! `<dir>/pids/NAME.pid`; killed on drop unless detached.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    pid_file: PathBuf,
    detach: bool,
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).stderr(Stdio::null()).status();
}

pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The status code of `GET path` on `addr`, if it answers.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

impl Process {
    pub fn spawn(name: &str, program: &Path, args: &[&str], dir: &Path, detach: bool) -> Result<Self> {
        Self::spawn_with_env(name, program, args, &[], dir, detach)
    }

    /// [`spawn`](Self::spawn) with `env` added to the inherited environment.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        dir: &Path,
        detach: bool,
    ) -> Result<Self> {
        let log = dir.join("logs").join(format!("{name}.log"));
        let pid_file = dir.join("pids").join(format!("{name}.pid"));
        let io_err = |what, path: &Path| {
            let path = path.display().to_string();
            move |source| Error::Io { what, path, source }
        };
        let out = std::fs::File::create(&log).map_err(io_err("creating log", &log))?;
        let err = out.try_clone().map_err(io_err("opening log", &log))?;
        let mut cmd = Command::new(program);
        cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(out).stderr(err);
        if detach {
            // Its own process group: a Ctrl-C at the terminal that ran
            // `skiffctl up` must not take the cluster down with it.
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn { name: name.into(), source })?;
        let record = PidRecord { pid: child.id(), start: start_time(child.id()) };
        std::fs::write(&pid_file, record.to_string()).map_err(io_err("writing pid file", &pid_file))?;
        Ok(Self { name: name.into(), child: Some(child), log, pid_file, detach })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until `GET path` on `addr` answers 200, failing early if the
    /// process exits.
    pub async fn wait_http_ok(&self, addr: SocketAddr, path: &str, timeout: Duration) -> Result<()> {
        self.wait_http_status(addr, path, 200, timeout).await
    }

    /// Waits until `GET path` on `addr` answers `status` (401 from a
    /// server that asks for credentials), failing early if the process exits.
    pub async fn wait_http_status(&self, addr: SocketAddr, path: &str, status: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let probe = tokio::task::spawn_blocking({
                let path = path.to_string();
                move || http_status(addr, &path)
            });
            if probe.await.ok().flatten() == Some(status) {
                return Ok(());
            }
            if let Some(status) = self.exit_status() {
                return Err(Error::Exited { name: self.name.clone(), status, log_tail: log_tail(&self.log) });
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady { name: self.name.clone(), timeout, log_tail: log_tail(&self.log) });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn exit_status(&self) -> Option<String> {
        // try_wait needs &mut; /proc tells the same without it.
        let pid = self.pid()?;
        (!running(pid)).then(|| "exited".into())
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                let _ = std::fs::remove_file(&self.pid_file);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&self.pid_file);
    }

    /// SIGKILL at once: a crash, as tests of recovery need.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.detach {
            self.stop(Duration::from_secs(5));
        }
    }
}

/// Stops every process whose pid file is under `<state_dir>/pids`, in
/// reverse start order (services before etcd). Returns their names.
pub fn stop_detached(state_dir: &Path) -> Result<Vec<String>> {
    let pids = state_dir.join("pids");
    let entries = match std::fs::read_dir(&pids) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Io { what: "reading", path: pids.display().to_string(), source }),
    };
    let mut found: Vec<(std::time::SystemTime, String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.path().file_stem()?.to_string_lossy().into_owned();
            let modified = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((modified, name, e.path()))
        })
        .collect();
    found.sort();
    let mut stopped = Vec::new();
    for (_, name, path) in found.into_iter().rev() {
        if stop_pid_file(&path) {
            stopped.push(name);
        }
    }
    Ok(stopped)
}

/// What a pid file holds: the pid and the process's start time, since a
/// pid alone may name another process by the time the file is read.
struct PidRecord {
    pid: u32,
    /// Clock ticks after boot, /proc/PID/stat's `starttime`.
    start: Option<u64>,
}

impl std::fmt::Display for PidRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.start {
            Some(start) => write!(f, "{} {start}", self.pid),
            None => write!(f, "{}", self.pid),
        }
    }
}

impl PidRecord {
    fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        Some(Self { pid, start: words.next().and_then(|s| s.parse().ok()) })
    }

    /// Whether the pid still names the process started: a file without a
    /// start time (or from before one was written) can't tell, so no.
    fn is_current(&self) -> bool {
        self.start.is_some() && start_time(self.pid) == self.start
    }
}

/// The pid in pid file `path`, whatever now runs under it.
pub(crate) fn pid_in_file(path: &Path) -> Option<u32> {
    PidRecord::read(path).map(|r| r.pid)
}

/// The `--data-dir` of a running etcd that listens on 127.0.0.1:`port`, as
/// the launcher starts etcd.
pub(crate) fn etcd_data_dir_on(port: u16) -> Option<PathBuf> {
    let address = format!("127.0.0.1:{port}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let listens =
            args.iter().any(|a| a.starts_with("--listen-") && a.split(['=', ',']).any(|url| url.ends_with(&address)));
        let data_dir = args.iter().find_map(|a| a.strip_prefix("--data-dir="))?;
        listens.then(|| PathBuf::from(data_dir))
    })
}

/// When `pid` started, in clock ticks after boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis start at field 3
    // (state); starttime is field 22.
    stat.rsplit_once(')')?.1.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Stops the process named in pid file `path` (SIGTERM, SIGKILL after
/// 10s), waiting until it is gone, and removes the file. False if the file
/// named no process of ours: none, or a pid since taken by another process,
/// which is left alone.
pub(crate) fn stop_pid_file(path: &Path) -> bool {
    let record = PidRecord::read(path).filter(PidRecord::is_current);
    let pid = record.map(|r| r.pid);
    if let Some(pid) = pid {
        for (sig, grace) in [("TERM", Duration::from_secs(10)), ("KILL", Duration::from_secs(5))] {
            if !running(pid) {
                break;
            }
            signal(pid, sig);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && running(pid) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let _ = std::fs::remove_file(path);
    pid.is_some()
}

/// Whether `pid` exists and has not finished exiting. A zombie (exited, not
/// yet reaped by a parent that is still running, as in a test) counts as
/// gone only once its other threads are gone too: a multi-threaded process's
/// leader turns zombie while its last thread may still hold its sockets open.
pub fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let zombie = stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    !zombie || threads > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process this test owns, killed and reaped when the test ends.
    struct Bystander(Child);

    impl Drop for Bystander {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_stale_pid_file_signals_nobody() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pids")).unwrap();
        // The pid an earlier run wrote, since taken by an unrelated process.
        let bystander = Bystander(Command::new("sleep").arg("600").spawn().unwrap());
        let pid = bystander.0.id();
        std::fs::write(dir.path().join("pids/etcd.pid"), pid.to_string()).unwrap();

        assert!(stop_detached(dir.path()).unwrap().is_empty(), "nothing of ours was running");
        assert!(running(pid), "the unrelated process was left alone");
        assert!(!dir.path().join("pids/etcd.pid").exists(), "the stale file is gone");
    }

    #[test]
    fn a_detached_process_is_stopped_by_its_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["pids", "logs"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let sleep = Process::spawn("sleeper", Path::new("sleep"), &["600"], dir.path(), true).unwrap();
        let pid = sleep.pid().unwrap();
        assert_eq!(stop_detached(dir.path()).unwrap(), ["sleeper"]);
        assert!(!running(pid));
    }
}
