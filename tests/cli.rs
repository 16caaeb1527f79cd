//! Runs the built `chall-manager` binary as a user would, each test with
//! its own temporary data directory. Servers listen on 127.0.0.1 with a
//! port picked by the system.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

const BINARY: &str = env!("CARGO_BIN_EXE_chall-manager");

/// Variables the binary reads. Tests remove them so that the caller's
/// shell cannot change a test's outcome.
const ENVIRONMENT: [&str; 11] = [
    "CHALL_MANAGER_URL",
    "DIR",
    "CACHE",
    "PORT",
    "OCI_INSECURE",
    "OCI_USERNAME",
    "OCI_PASSWORD",
    "LOG_LEVEL",
    "RUST_LOG",
    "NO_COLOR",
    "CM_IDENTITY",
];

fn chall_manager(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(args).stdin(Stdio::null());
    for name in ENVIRONMENT {
        command.env_remove(name);
    }
    command
}

/// Runs an operator command on the data directory `dir`.
fn run_local(dir: &Path, args: &[&str]) -> Output {
    let mut command = chall_manager(args);
    command.arg("--dir").arg(dir);
    command.output().expect("failed to run chall-manager")
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr).lines().map(str::to_owned).collect()
}

/// Checks the error convention: exit code 1 and exactly one stderr line
/// `chall-manager: <message>`. Returns that line.
fn assert_one_line_error(output: &Output) -> String {
    let lines = stderr_lines(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "stderr: {lines:?}");
    assert!(lines[0].starts_with("chall-manager: "), "stderr: {lines:?}");
    lines[0].clone()
}

/// Returns a free port on 127.0.0.1 with nothing listening on it.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A `chall-manager serve` child process, killed if a test fails half way.
struct Server {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server on a port picked by the system, and waits for its
    /// `listening on ADDR` line.
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = chall_manager(&["serve", "--listen", "127.0.0.1", "--port", "0", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to start chall-manager serve");

        let (sender, receiver) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("listening on ") {
                    let _ = sender.send(address.to_owned());
                }
            }
        });
        let address = match receiver.recv_timeout(Duration::from_secs(30)) {
            Ok(address) => address.parse().expect("listening line has no socket address"),
            Err(err) => {
                let _ = child.kill();
                panic!("no `listening on` line from the server: {err}");
            }
        };
        Self { child, address, _dir: dir }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Sends SIGTERM and returns the exit code, failing after 30 s.
    fn terminate(&mut self) -> Option<i32> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("failed to send SIGTERM");

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "server still running 30 s after SIGTERM");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `GET path` over HTTP/1.1 and returns the status line.
fn http_get_status(address: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn help_lists_commands() {
    let output = chall_manager(&["--help"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0));
    for command in ["serve", "challenge", "instance"] {
        assert!(stdout.contains(command), "{command} missing from:\n{stdout}");
    }
}

#[test]
fn help_hides_password_from_environment() {
    let output = chall_manager(&["serve", "--help"]).env("OCI_PASSWORD", "hunter2-secret").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout.contains("--oci-password"), "{stdout}");
    assert!(!stdout.contains("hunter2-secret"), "{stdout}");
}

#[test]
fn bad_usage_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [&[&str]; 5] = [
        &["no-such-command"],
        &["challenge", "create", "web-1"],
        &["challenge", "create", "web-1", "--scenario", "registry.example/web:v1", "--timeout", "600"],
        &["challenge", "create", "web-1", "--scenario", "registry.example/web:v1", "--min", "-1"],
        &["instance", "up", "web-1", "team-3", "--additional", "no-equals-sign"],
    ];
    for args in cases {
        let output = run_local(dir.path(), args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {:?}", stderr_lines(&output));
    }
}

#[test]
fn challenge_get_missing_fails() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_local(dir.path(), &["challenge", "get", "missing"]);
    let line = assert_one_line_error(&output);
    assert!(line.contains("not found"), "{line}");
    assert!(line.contains("missing"), "{line}");
    assert!(output.stdout.is_empty());
}

#[test]
fn challenge_list_json_empty_is_array() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_local(dir.path(), &["challenge", "list", "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "[]\n");
    assert!(output.stderr.is_empty(), "{:?}", stderr_lines(&output));
}

#[test]
fn instance_list_json_empty_is_array() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_local(dir.path(), &["instance", "list", "team-3", "-o", "json"]);
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "[]\n");
}

#[test]
fn challenge_list_table_empty_has_header() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_local(dir.path(), &["challenge", "list"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("ID "), "{stdout}");
}

#[test]
fn instance_get_missing_fails() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_local(dir.path(), &["instance", "get", "web-1", "team-3"]);
    let line = assert_one_line_error(&output);
    assert!(line.contains("not found"), "{line}");
}

#[test]
fn data_dir_comes_from_environment() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let output = chall_manager(&["challenge", "list"]).env("DIR", &dir).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert!(dir.is_dir(), "{} was not created", dir.display());
}

#[test]
fn closed_port_url_fails_with_hint() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let output = chall_manager(&["challenge", "list", "--url", &url]).output().unwrap();
    let line = assert_one_line_error(&output);
    assert!(line.contains("is `chall-manager serve` running at"), "{line}");
    assert!(line.contains(&url), "{line}");
    assert!(line.contains("CHALL_MANAGER_URL"), "{line}");
}

#[test]
fn url_from_environment_is_used() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let dir = tempfile::tempdir().unwrap();
    let mut command = chall_manager(&["challenge", "get", "web-1"]);
    command.env("CHALL_MANAGER_URL", &url).env("DIR", dir.path());
    let line = assert_one_line_error(&command.output().unwrap());
    assert!(line.contains(&url), "{line}");
}

#[test]
fn serve_answers_and_stops_on_sigterm() {
    let mut server = Server::start();
    assert_eq!(server.address.ip().to_string(), "127.0.0.1");
    assert_ne!(server.address.port(), 0);

    let status = http_get_status(server.address, "/healthcheck");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn directory_scenario_with_url_asks_for_push() {
    let server = Server::start();
    let scenario = tempfile::tempdir().unwrap();
    let scenario_path = scenario.path().to_str().unwrap();

    let output = chall_manager(&["challenge", "create", "web-1", "--scenario", scenario_path, "--url", &server.url()])
        .output()
        .unwrap();
    let line = assert_one_line_error(&output);
    assert!(line.contains("is a local directory"), "{line}");
    assert!(line.contains("chall-manager challenge push"), "{line}");
}

#[test]
fn https_url_is_rejected() {
    let output = chall_manager(&["challenge", "list", "--url", "https://127.0.0.1:1"]).output().unwrap();
    let line = assert_one_line_error(&output);
    assert!(line.contains("plain HTTP"), "{line}");
}

#[test]
fn empty_url_means_local_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let output = chall_manager(&["challenge", "list", "--output", "json"])
        .env("CHALL_MANAGER_URL", "")
        .env("DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[]");
}

#[test]
fn missing_scenario_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let output = chall_manager(&["challenge", "create", "web", "--scenario", "./no-such-dir", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let line = assert_one_line_error(&output);
    assert!(line.contains("scenario directory ./no-such-dir not found"), "{line}");
}

#[test]
fn push_rejects_a_broken_scenario_before_sending() {
    let scenario = tempfile::tempdir().unwrap();
    std::fs::write(scenario.path().join("scenario.yaml"), "runtime: exec\nup: echo\ndwon: echo\n").unwrap();
    // Nothing listens on this port: the command must fail before trying.
    let reference = format!("127.0.0.1:{}/broken:v1", closed_port());
    let output = chall_manager(&["challenge", "push"]).arg(scenario.path()).arg(&reference).output().unwrap();
    let line = assert_one_line_error(&output);
    assert!(line.contains("dwon"), "{line}");
}

#[test]
fn oci_insecure_accepts_one_from_environment() {
    let dir = tempfile::tempdir().unwrap();
    let output =
        chall_manager(&["challenge", "list"]).env("OCI_INSECURE", "1").env("DIR", dir.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn flag_variate_prints_go_sdk_variant() {
    // Printed by the Go SDK's Variate("0123456789abcdef", "this_is_the_flag").
    let output =
        chall_manager(&["flag", "variate", "--identity", "0123456789abcdef", "this_is_the_flag"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "tH1s_1s_thE_FlaG\n");
    assert!(output.stderr.is_empty(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn flag_variate_reads_identity_from_environment() {
    let output = chall_manager(&["flag", "variate", "this_is_the_flag"])
        .env("CM_IDENTITY", "fedcba9876543210")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "THi5_15_thE_flag\n");
}

#[test]
fn flag_variate_accepts_leading_hyphen() {
    let output = chall_manager(&["flag", "variate", "--identity", "a", "-flag"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).chars().next(), Some('-'));
}

#[test]
fn flag_variate_without_identity_is_usage_error() {
    let cases: [(&[&str], Option<&str>); 3] = [
        (&["flag", "variate", "this_is_the_flag"], None),
        (&["flag", "variate", "this_is_the_flag"], Some("")),
        (&["flag", "variate", "--identity", "", "this_is_the_flag"], None),
    ];
    for (args, environment) in cases {
        let mut command = chall_manager(args);
        if let Some(identity) = environment {
            command.env("CM_IDENTITY", identity);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {environment:?}: {stderr}");
        assert!(stderr.contains("--identity"), "{stderr}");
        assert!(output.stdout.is_empty(), "{}", String::from_utf8_lossy(&output.stdout));
    }
}

#[test]
fn serve_with_json_logs_writes_only_json() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let mut child = chall_manager(&["serve", "--listen", "127.0.0.1", "--port", "0", "--log-format", "json", "--dir"])
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());

    let mut address = None;
    for line in stderr.lines().take(20) {
        let line = line.unwrap();
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|err| panic!("not JSON: {line:?}: {err}"));
        if event["fields"]["message"] == "listening" {
            address = event["fields"]["address"].as_str().map(str::to_owned);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let address = address.expect("no `listening` event with an address");
    assert!(address.starts_with("127.0.0.1:"), "{address}");
}

/// Creates challenge `web` in `dir` from a scenario whose `up` prints one
/// output line, with a 10 minute timeout and a pool bound of 4.
fn create_local_challenge(dir: &Path) {
    let scenario = dir.join("scenario");
    std::fs::create_dir_all(&scenario).unwrap();
    std::fs::write(
        scenario.join("scenario.yaml"),
        "runtime: exec\nup: echo '{\"connection_info\":\"nc 127.0.0.1 1\"}'\ndown: \"true\"\n",
    )
    .unwrap();
    let scenario = scenario.to_str().unwrap();
    let output =
        run_local(dir, &["challenge", "create", "web", "--scenario", scenario, "--timeout", "10m", "--max", "4"]);
    assert!(output.status.success(), "{:?}", stderr_lines(&output));
}

fn challenge_json(dir: &Path) -> serde_json::Value {
    let output = run_local(dir, &["challenge", "get", "web", "--output", "json"]);
    assert!(output.status.success(), "{:?}", stderr_lines(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn challenge_update_changes_given_fields_only() {
    let dir = tempfile::tempdir().unwrap();
    create_local_challenge(dir.path());

    let output = run_local(dir.path(), &["challenge", "update", "web", "--additional", "color=blue", "--min", "2"]);
    assert!(output.status.success(), "{:?}", stderr_lines(&output));

    let challenge = challenge_json(dir.path());
    assert_eq!(challenge["additional"], serde_json::json!({"color": "blue"}));
    assert_eq!(challenge["min"], "2");
    assert_eq!(challenge["timeout"], "600s", "a field not given changed");
    assert_eq!(challenge["max"], "4", "a field not given changed");
}

#[test]
fn challenge_update_reset_clears_a_field() {
    let dir = tempfile::tempdir().unwrap();
    create_local_challenge(dir.path());

    let output = run_local(dir.path(), &["challenge", "update", "web", "--reset", "timeout"]);
    assert!(output.status.success(), "{:?}", stderr_lines(&output));

    assert_eq!(challenge_json(dir.path())["timeout"], serde_json::Value::Null);
}

#[test]
fn challenge_update_rejects_contradictions() {
    let dir = tempfile::tempdir().unwrap();
    create_local_challenge(dir.path());

    let nothing = run_local(dir.path(), &["challenge", "update", "web"]);
    assert_eq!(nothing.status.code(), Some(2), "an update without fields is a usage error");

    let both = run_local(dir.path(), &["challenge", "update", "web", "--timeout", "5m", "--reset", "timeout"]);
    let line = assert_one_line_error(&both);
    assert!(line.contains("--reset timeout"), "{line}");

    let inverted = run_local(dir.path(), &["challenge", "update", "web", "--min", "5"]);
    let line = assert_one_line_error(&inverted);
    assert!(line.contains("min"), "a min above the stored max was accepted: {line}");
    assert_eq!(challenge_json(dir.path())["timeout"], "600s", "a rejected update changed the challenge");
}
