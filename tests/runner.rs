//! The runner against real shell scripts in temporary directories.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use chall_manager::runner::{self, Deployment, Error, Outputs, Runner};
use tempfile::TempDir;

const IDENTITY: &str = "0123456789abcdef";

/// A scenario directory and a state directory for one instance.
struct Fixture {
    scenario: TempDir,
    state: TempDir,
    additional: BTreeMap<String, String>,
}

impl Fixture {
    /// Writes `scenario.yaml` and the given files.
    fn new(scenario_yaml: &str, files: &[(&str, &str)]) -> Self {
        let scenario = TempDir::new().unwrap();
        std::fs::write(scenario.path().join("scenario.yaml"), scenario_yaml).unwrap();
        for (name, content) in files {
            std::fs::write(scenario.path().join(name), content).unwrap();
        }
        Self { scenario, state: TempDir::new().unwrap(), additional: BTreeMap::new() }
    }

    /// Creates an exec scenario whose `up` is `script` and whose `down`
    /// succeeds.
    fn with_up_script(script: &str) -> Self {
        Self::new("runtime: exec\nup: sh up.sh\ndown: 'true'\n", &[("up.sh", script)])
    }

    fn deployment(&self) -> Deployment<'_> {
        Deployment {
            scenario_dir: self.scenario.path(),
            identity: IDENTITY,
            additional: &self.additional,
            state_dir: self.state.path(),
        }
    }

    fn runner(&self) -> Box<dyn Runner> {
        runner::load(self.scenario.path()).unwrap()
    }

    async fn up(&self) -> Result<Outputs, Error> {
        self.runner().up(&self.deployment()).await
    }

    /// Reads a pid a script wrote into the state directory.
    fn pid(&self, name: &str) -> i32 {
        read_pid(&self.state.path().join(name))
    }
}

fn read_pid(path: &Path) -> i32 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    text.trim().parse().unwrap_or_else(|err| panic!("pid in {}: {err}", path.display()))
}

/// Returns whether a process exists and is not a zombie (`kill -0` succeeds on
/// zombies, which are dead but not yet reaped by their parent).
fn is_running(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else { return false };
    if rustix::process::test_kill_process(pid).is_err() {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())) else {
        return false;
    };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    state != Some('Z')
}

/// Waits up to `within` for every pid to stop running.
async fn all_stopped(pids: &[i32], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !pids.iter().any(|&pid| is_running(pid)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !pids.iter().any(|&pid| is_running(pid))
}

fn kill(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Waits for a file a script writes, so a test acts once the script got
/// that far.
async fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} not written within 5 s", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn up_returns_connection_info_and_flags() {
    let fixture = Fixture::with_up_script(
        r#"
echo "deploying..."
echo '{"connection_info":"nc 127.0.0.1 1337","flags":["CTF{a}","CTF{b}"],"flag":"CTF{legacy}"}'
echo
"#,
    );

    let outputs = fixture.up().await.unwrap();

    assert_eq!(outputs.connection_info, "nc 127.0.0.1 1337");
    assert_eq!(outputs.flags, ["CTF{a}", "CTF{b}", "CTF{legacy}"]);
}

#[tokio::test]
async fn up_sets_environment_and_directory() {
    let mut fixture = Fixture::with_up_script(
        r#"
printf '%s' "$CM_ADDITIONAL" >"$CM_STATE_DIR/additional.json"
pwd >"$CM_STATE_DIR/pwd"
printf '{"connection_info":"%s|%s","flags":["%s"]}\n' "$CM_IDENTITY" "$CM_STATE_DIR" "${PATH:+path-inherited}"
"#,
    );
    fixture.additional.insert("password".to_owned(), "s3cr\"et".to_owned());
    fixture.additional.insert("level".to_owned(), "2".to_owned());

    let outputs = fixture.up().await.unwrap();

    let state = fixture.state.path().to_str().unwrap();
    assert_eq!(outputs.connection_info, format!("{IDENTITY}|{state}"));
    assert_eq!(outputs.flags, ["path-inherited"]);
    let additional: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(fixture.state.path().join("additional.json")).unwrap()).unwrap();
    assert_eq!(additional, fixture.additional);
    let pwd = std::fs::read_to_string(fixture.state.path().join("pwd")).unwrap();
    assert_eq!(Path::new(pwd.trim()).canonicalize().unwrap(), fixture.scenario.path().canonicalize().unwrap());
}

#[tokio::test]
async fn up_failure_reports_stderr_tail_and_status() {
    let fixture = Fixture::with_up_script(
        r#"
i=1
while [ $i -le 30 ]; do printf 'problem %02d\n' $i >&2; i=$((i + 1)); done
echo '{"connection_info":"unused"}'
exit 3
"#,
    );

    let error = fixture.up().await.unwrap_err();

    assert!(matches!(error, Error::Exited { .. }), "{error:?}");
    assert!(!error.is_invalid_scenario());
    let message = error.to_string();
    assert!(message.contains("`up` command failed"), "{message}");
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(message.contains("stderr (last 20 lines):"), "{message}");
    assert!(message.contains("problem 11\n"), "{message}");
    assert!(message.contains("problem 30\n"), "{message}");
    assert!(!message.contains("problem 10"), "{message}");
}

#[tokio::test]
async fn up_failure_without_stderr_says_so() {
    let fixture = Fixture::with_up_script("exit 1\n");

    let message = fixture.up().await.unwrap_err().to_string();

    assert!(message.contains("exit status: 1"), "{message}");
    assert!(message.contains("stderr was empty"), "{message}");
}

#[tokio::test]
async fn up_malformed_output_is_an_error() {
    let cases = [
        // Progress text after the JSON line hides it.
        ("text after JSON", "echo '{\"connection_info\":\"x\"}'; echo done", "is not JSON"),
        ("no output", "true", "stdout is empty"),
        ("connection_info missing", "echo '{\"flags\":[\"a\"]}'", "`connection_info` is missing"),
        ("connection_info number", "echo '{\"connection_info\":1}'", "`connection_info` must be a string"),
        ("flag not string", "echo '{\"connection_info\":\"x\",\"flags\":[1]}'", "`flags[0]` must be a string"),
    ];
    for (name, script, expected) in cases {
        let fixture = Fixture::with_up_script(&format!("echo 'checking' >&2\n{script}\n"));

        let error = fixture.up().await.unwrap_err();

        assert!(matches!(error, Error::InvalidOutput { .. }), "{name}: {error:?}");
        let message = error.to_string();
        assert!(message.contains(expected), "{name}: {message}");
        assert!(message.contains("exit status: 0"), "{name}: {message}");
        assert!(message.contains("checking"), "{name}: {message}");
    }
}

#[tokio::test]
async fn up_timeout_kills_process_group() {
    let fixture = Fixture::new(
        "runtime: exec\nup: sh up.sh\ndown: 'true'\ntimeout: 1s\n",
        &[(
            "up.sh",
            r#"
echo "started" >&2
sleep 60 &
echo $! >"$CM_STATE_DIR/child.pid"
echo $$ >"$CM_STATE_DIR/main.pid"
sleep 60
"#,
        )],
    );
    let started = Instant::now();

    let error = fixture.up().await.unwrap_err();

    let elapsed = started.elapsed();
    assert!(matches!(error, Error::TimedOut { .. }), "{error:?}");
    assert!(elapsed >= Duration::from_secs(1), "returned after {elapsed:?}");
    // Far below the 60 s the script sleeps, with room for a loaded machine:
    // the group gets SIGKILL at most 5 s after SIGTERM.
    assert!(elapsed < Duration::from_secs(10), "returned after {elapsed:?}");
    let message = error.to_string();
    assert!(message.contains("timed out after 1s"), "{message}");
    assert!(message.contains("started"), "{message}");
    let pids = [fixture.pid("main.pid"), fixture.pid("child.pid")];
    assert!(all_stopped(&pids, Duration::from_secs(2)).await, "processes {pids:?} still run");
}

#[tokio::test]
async fn up_timeout_kills_processes_ignoring_sigterm() {
    let fixture = Fixture::new(
        "runtime: exec\nup: sh up.sh\ndown: 'true'\ntimeout: 1s\n",
        &[(
            "up.sh",
            r#"
trap '' TERM
sleep 60 &
echo $! >"$CM_STATE_DIR/child.pid"
echo $$ >"$CM_STATE_DIR/main.pid"
wait
"#,
        )],
    );
    let started = Instant::now();

    let error = fixture.up().await.unwrap_err();

    // SIGTERM is ignored, so the shell ends with the SIGKILL 5 s later.
    let elapsed = started.elapsed();
    assert!(matches!(error, Error::TimedOut { .. }), "{error:?}");
    assert!(elapsed >= Duration::from_secs(5), "returned after {elapsed:?}");
    let pids = [fixture.pid("main.pid"), fixture.pid("child.pid")];
    assert!(all_stopped(&pids, Duration::from_secs(2)).await, "processes {pids:?} still run");
}

#[tokio::test]
async fn up_does_not_wait_for_background_process() {
    // The background sleep inherits stdout and stderr and keeps them open.
    let fixture = Fixture::with_up_script(
        r#"
sleep 60 &
echo $! >"$CM_STATE_DIR/service.pid"
echo '{"connection_info":"x"}'
"#,
    );
    let started = Instant::now();

    let outputs = fixture.up().await;

    let elapsed = started.elapsed();
    let service = fixture.pid("service.pid");
    let still_running = is_running(service);
    kill(service);
    assert_eq!(outputs.unwrap().connection_info, "x");
    // Waiting for the background process would take its 60 s.
    assert!(elapsed < Duration::from_secs(5), "returned after {elapsed:?}");
    assert!(still_running, "the background process was stopped");
}

#[tokio::test]
async fn dropped_up_kills_process_group() {
    let fixture = Fixture::with_up_script(
        r#"
sleep 60 &
echo $! >"$CM_STATE_DIR/child.pid"
echo $$ >"$CM_STATE_DIR/main.pid"
sleep 60
"#,
    );
    let runner = fixture.runner();
    let deployment = fixture.deployment();
    let child_file = fixture.state.path().join("child.pid");

    let up = runner.up(&deployment);
    tokio::select! {
        result = up => panic!("up ended early: {result:?}"),
        () = wait_for_file(&child_file) => {}
    }
    wait_for_file(&fixture.state.path().join("main.pid")).await;

    // The select dropped the `up` future.
    let pids = [fixture.pid("main.pid"), fixture.pid("child.pid")];
    assert!(all_stopped(&pids, Duration::from_secs(2)).await, "processes {pids:?} still run");
}

#[tokio::test]
async fn down_runs_command_and_reports_failure() {
    let fixture = Fixture::new(
        "runtime: exec\nup: 'true'\ndown: sh down.sh\n",
        &[("down.sh", "echo \"$CM_IDENTITY\" >\"$CM_STATE_DIR/down-ran\"\n")],
    );
    let runner = fixture.runner();

    runner.down(&fixture.deployment()).await.unwrap();
    let ran = std::fs::read_to_string(fixture.state.path().join("down-ran")).unwrap();
    assert_eq!(ran.trim(), IDENTITY);

    std::fs::write(fixture.scenario.path().join("down.sh"), "echo 'cannot destroy' >&2\nexit 4\n").unwrap();
    let message = runner.down(&fixture.deployment()).await.unwrap_err().to_string();
    assert!(message.contains("`down` command failed with exit status: 4"), "{message}");
    assert!(message.contains("cannot destroy"), "{message}");
}

#[test]
fn load_rejects_invalid_scenarios() {
    let cases = [
        ("runtime missing", "up: a\ndown: b\n", "field `runtime` is missing"),
        ("unknown runtime", "runtime: docker\nup: a\ndown: b\n", "unsupported runtime \"docker\""),
        ("up missing", "runtime: exec\ndown: b\n", "field `up` is missing"),
        ("down missing", "runtime: exec\nup: a\n", "field `down` is missing"),
        ("up empty", "runtime: exec\nup: ' '\ndown: b\n", "field `up` is empty"),
        ("up not a string", "runtime: exec\nup: [a]\ndown: b\n", "up: invalid type"),
        ("unknown field", "runtime: exec\nup: a\ndown: b\ntimout: 1m\n", "unknown field `timout`"),
        ("bad timeout", "runtime: exec\nup: a\ndown: b\ntimeout: soon\n", "field `timeout`"),
        ("not YAML", "runtime: exec\nup: [a\n", "scenario.yaml"),
        ("not a mapping", "- runtime\n", "expected a mapping"),
        ("empty file", "", "the file is empty"),
    ];
    for (name, yaml, expected) in cases {
        let fixture = Fixture::new(yaml, &[]);

        let error = runner::load(fixture.scenario.path()).err().unwrap_or_else(|| panic!("{name}: loaded"));

        assert!(error.is_invalid_scenario(), "{name}: {error:?}");
        let message = error.to_string();
        assert!(message.contains(expected), "{name}: {message}");
        let file = fixture.scenario.path().join("scenario.yaml");
        assert!(message.contains(file.to_str().unwrap()), "{name}: {message}");
    }
}

#[test]
fn load_rejects_unrecognized_directory() {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("main.go"), "package main\n").unwrap();

    let error = runner::load(dir.path()).err().unwrap();

    assert!(matches!(error, Error::Unrecognized), "{error:?}");
    assert!(error.is_invalid_scenario());
}

#[test]
fn load_rejects_both_runtimes() {
    let fixture = Fixture::new("runtime: exec\nup: a\ndown: b\n", &[("Pulumi.yaml", "name: x\n")]);

    let error = runner::load(fixture.scenario.path()).err().unwrap();

    assert!(error.is_invalid_scenario());
    assert!(error.to_string().contains("both scenario.yaml and Pulumi.yaml"), "{error}");
}

#[tokio::test]
async fn pulumi_scenario_loads_but_cannot_deploy() {
    for file in ["Pulumi.yaml", "Pulumi.yml"] {
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.path().join(file), "name: x\nruntime: go\n").unwrap();
        let state = TempDir::new().unwrap();
        let additional = BTreeMap::new();
        let deployment = Deployment {
            scenario_dir: dir.path(),
            identity: IDENTITY,
            additional: &additional,
            state_dir: state.path(),
        };

        let runner = runner::load(dir.path()).unwrap_or_else(|err| panic!("{file}: {err}"));
        let error = runner.up(&deployment).await.unwrap_err();

        assert!(matches!(error, Error::PulumiNotSupported), "{file}: {error:?}");
        assert!(error.to_string().contains("Pulumi scenarios are not supported yet"), "{file}: {error}");
        assert!(runner.down(&deployment).await.is_err(), "{file}");
    }
}

/// Copies the example scenario with mode 0644, as a registry pull leaves
/// it, so that a script called as `./up.sh` would fail.
fn example_scenario() -> TempDir {
    use std::os::unix::fs::PermissionsExt;

    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/exec-tcp-addition");
    let copy = TempDir::new().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        let target = copy.path().join(entry.file_name());
        std::fs::copy(entry.path(), &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    copy
}

/// Connects to the port of `nc 127.0.0.1 <port>` connection info, sends
/// the sum asked for and returns the reply.
fn solve_addition(connection_info: &str) -> String {
    let port: u16 = connection_info.strip_prefix("nc 127.0.0.1 ").expect(connection_info).parse().unwrap();
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());

    let mut question = String::new();
    reader.read_line(&mut question).unwrap();
    let numbers: Vec<u32> = question
        .trim()
        .trim_start_matches("What is ")
        .trim_end_matches('?')
        .split(" + ")
        .map(|n| n.parse().unwrap_or_else(|_| panic!("question {question:?}")))
        .collect();
    writeln!(&stream, "{}", numbers[0] + numbers[1]).unwrap();

    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    reply.trim().to_owned()
}

fn python3_available() -> bool {
    let found = std::process::Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: the example scenario needs python3, which is not installed");
    }
    found
}

#[tokio::test]
async fn example_serves_flag_until_down() {
    if !python3_available() {
        return;
    }
    let scenario = example_scenario();
    let state = TempDir::new().unwrap();
    let additional = BTreeMap::new();
    let deployment = Deployment {
        scenario_dir: scenario.path(),
        identity: IDENTITY,
        additional: &additional,
        state_dir: state.path(),
    };
    let runner = runner::load(scenario.path()).unwrap();

    let outputs = runner.up(&deployment).await.unwrap();
    let reply = solve_addition(&outputs.connection_info);
    let down = runner.down(&deployment).await;

    assert_eq!(outputs.flags.len(), 1);
    assert_eq!(reply, outputs.flags[0]);
    assert!(reply.starts_with("CTF{"), "{reply}");
    assert!(reply.ends_with('}'), "{reply}");
    down.unwrap();
    let port: u16 = outputs.connection_info.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still accepts connections");
}

#[tokio::test]
async fn example_flags_differ_per_identity() {
    if !python3_available() {
        return;
    }
    let scenario = example_scenario();
    let runner = runner::load(scenario.path()).unwrap();
    let additional = BTreeMap::new();
    let mut flags = Vec::new();

    for identity in ["0000000000000001", "0000000000000002"] {
        let state = TempDir::new().unwrap();
        let deployment =
            Deployment { scenario_dir: scenario.path(), identity, additional: &additional, state_dir: state.path() };
        let outputs = runner.up(&deployment).await.unwrap();
        runner.down(&deployment).await.unwrap();
        flags.push(outputs.flags);
    }

    assert_ne!(flags[0], flags[1]);
}

#[tokio::test]
async fn example_down_without_up_succeeds() {
    let scenario = example_scenario();
    let state = TempDir::new().unwrap();
    let additional = BTreeMap::new();
    let deployment = Deployment {
        scenario_dir: scenario.path(),
        identity: IDENTITY,
        additional: &additional,
        state_dir: state.path(),
    };

    runner::load(scenario.path()).unwrap().down(&deployment).await.unwrap();
}
