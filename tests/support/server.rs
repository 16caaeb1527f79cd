//! A real `chall-manager serve` process on 127.0.0.1, for end-to-end tests.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// A running server with its own data directory. Stopped with SIGTERM when
/// dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    data: TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a server with extra environment variables, which its exec
    /// scenarios inherit.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("create the data directory");
        Self::start_in(data, env)
    }

    /// Starts a server over an existing data directory.
    pub fn start_in(data: TempDir, env: &[(&str, &str)]) -> Self {
        Self::start_on_port(0, data, env)
    }

    /// Starts a server on a given port of 127.0.0.1; 0 lets the system pick.
    pub fn start_on_port(port: u16, data: TempDir, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chall-manager"));
        command
            .args(["serve", "--listen", "127.0.0.1", "--port", &port.to_string(), "--oci-insecure", "--dir"])
            .arg(data.path())
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start chall-manager serve");

        // Read stderr until the server reports its address, then keep
        // draining it so the server never blocks on a full pipe.
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (sender, receiver) = std::sync::mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = sender.send(addr.trim().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = receiver
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("serve did not report its address; stderr: {:?}", log.lock().unwrap()));
        let addr = addr.parse().expect("serve printed a socket address");
        Self { child, addr, data, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Stops the server and returns its data directory, to restart over it.
    pub fn stop(mut self) -> TempDir {
        self.terminate();
        let data = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.data, data)
    }

    /// Kills the server with SIGKILL, as a crash would, and returns its
    /// data directory.
    pub fn crash(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let data = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.data, data)
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Writes a scenario directory from (relative path, content) pairs.
pub fn scenario_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("create the scenario directory");
    for (path, content) in files {
        let path: PathBuf = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

/// Whether a process is running. A zombie (exited, not yet reaped by its
/// parent, which may be a PID 1 that never reaps) counts as stopped.
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X"))
}
