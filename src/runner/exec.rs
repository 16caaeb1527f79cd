//! Exec scenarios: `scenario.yaml` names two shell commands.
//!
//! ```yaml
//! runtime: exec
//! up: sh up.sh        # deploys an instance, prints its outputs last
//! down: sh down.sh    # destroys it
//! timeout: 10m        # optional, per command
//! ```
//!
//! The full contract (environment, output line, failures) is in
//! `docs/scenarios.md`.

use std::{ffi::OsString, path::Path, time::Duration};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use tracing::info;

use super::{
    Deployment, Error, Outputs, Runner, Step,
    process::{self, Finished, ShellCommand},
};

/// File that makes a directory an exec scenario.
pub const SCENARIO_FILE: &str = "scenario.yaml";

/// Time each command may run when `scenario.yaml` sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Characters of a malformed output line an error message quotes.
const OUTPUT_EXCERPT_CHARS: usize = 200;

/// An exec scenario, loaded from its `scenario.yaml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRunner {
    up: String,
    down: String,
    timeout: Duration,
}

/// `scenario.yaml` as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with the fields runtime, up, down and timeout")]
struct ScenarioFile {
    runtime: Option<String>,
    up: Option<String>,
    down: Option<String>,
    timeout: Option<Yaml>,
}

impl ExecRunner {
    /// Reads and validates a `scenario.yaml`.
    ///
    /// # Errors
    ///
    /// Fails if the file cannot be read, is not YAML, has an unknown or
    /// ill-typed field, has a `runtime` other than `exec`, lacks `up` or
    /// `down`, or has an invalid `timeout`. Every error names the file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|error| Error::ReadFile { path: path.to_owned(), error })?;
        if text.trim().is_empty() {
            return Err(Error::InvalidFile { path: path.to_owned(), reason: "the file is empty".to_owned() });
        }
        let file: ScenarioFile = serde_norway::from_str(&text)
            .map_err(|err| Error::InvalidFile { path: path.to_owned(), reason: err.to_string() })?;

        Self::validate(path, file)
    }

    fn validate(path: &Path, file: ScenarioFile) -> Result<Self, Error> {
        let invalid_field = |field: &str, reason: String| Error::InvalidFile {
            path: path.to_owned(),
            reason: format!("field `{field}` {reason}"),
        };

        match file.runtime.as_deref() {
            Some("exec") => {}
            Some(runtime) => {
                return Err(Error::UnsupportedRuntime { path: path.to_owned(), runtime: runtime.to_owned() });
            }
            None => return Err(invalid_field("runtime", "is missing (set it to `exec`)".to_owned())),
        }
        let up = required_command(file.up, "deploys an instance, like `sh up.sh`")
            .map_err(|reason| invalid_field("up", reason))?;
        let down = required_command(file.down, "destroys an instance, like `sh down.sh`")
            .map_err(|reason| invalid_field("down", reason))?;
        let timeout = match file.timeout {
            None => DEFAULT_TIMEOUT,
            Some(value) => timeout_from_yaml(&value).map_err(|reason| invalid_field("timeout", reason))?,
        };

        Ok(Self { up, down, timeout })
    }

    /// Time each of `up` and `down` may run.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one command with the deployment's environment.
    #[tracing::instrument(name = "scenario_command", skip_all, fields(identity = %deployment.identity, step = %step))]
    async fn run(&self, step: Step, deployment: &Deployment<'_>) -> Result<Finished, Error> {
        let command = match step {
            Step::Up => &self.up,
            Step::Down => &self.down,
        };
        // Values may be secrets: only the keys are logged.
        let additional_keys: Vec<&str> = deployment.additional.keys().map(String::as_str).collect();
        info!(command = %command, timeout_s = self.timeout.as_secs(), additional_keys = ?additional_keys, "running scenario command");

        process::run(ShellCommand {
            step,
            command,
            dir: deployment.scenario_dir,
            env: environment(deployment),
            timeout: self.timeout,
        })
        .await
    }
}

#[async_trait]
impl Runner for ExecRunner {
    async fn up(&self, deployment: &Deployment<'_>) -> Result<Outputs, Error> {
        let finished = self.run(Step::Up, deployment).await?;
        parse_outputs(&finished.stdout).map_err(|reason| Error::InvalidOutput {
            step: Step::Up,
            status: finished.status,
            reason,
            stderr: finished.stderr,
        })
    }

    async fn down(&self, deployment: &Deployment<'_>) -> Result<(), Error> {
        self.run(Step::Down, deployment).await?;
        Ok(())
    }
}

/// Checks that a command field is present and not blank.
fn required_command(command: Option<String>, purpose: &str) -> Result<String, String> {
    match command {
        None => Err(format!("is missing (it names the shell command that {purpose})")),
        Some(command) if command.trim().is_empty() => Err("is empty".to_owned()),
        Some(command) => Ok(command),
    }
}

/// Variables the command gets on top of the inherited environment.
fn environment(deployment: &Deployment<'_>) -> Vec<(&'static str, OsString)> {
    let additional = serde_json::to_string(deployment.additional).expect("a map of strings always serializes to JSON");
    // The command runs in the scenario directory: a relative state path
    // would point elsewhere.
    let state_dir = std::path::absolute(deployment.state_dir).unwrap_or_else(|_| deployment.state_dir.to_owned());

    let mut variables = vec![
        ("CM_IDENTITY", deployment.identity.into()),
        ("CM_ADDITIONAL", additional.into()),
        ("CM_STATE_DIR", state_dir.into_os_string()),
    ];
    if let Some(binary) = chall_manager_binary() {
        variables.push(("CHALL_MANAGER", binary.into()));
    }
    variables
}

/// Path of the running `chall-manager` binary, which scenarios may call
/// for helpers such as `flag variate` even when it is not on `PATH`.
/// `None` when the runner runs inside another program (tests, for one).
fn chall_manager_binary() -> Option<&'static std::path::Path> {
    static BINARY: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            std::env::current_exe().ok().filter(|path| path.file_name().is_some_and(|name| name == "chall-manager"))
        })
        .as_deref()
}

fn timeout_from_yaml(value: &Yaml) -> Result<Duration, String> {
    match value {
        Yaml::String(text) => parse_timeout(text),
        Yaml::Number(number) => Err(format!(
            "must have a unit, like 90s or 10m, but is the bare number {number} (write \"{number}s\" for seconds)"
        )),
        _ => Err("must be a duration with a unit, like 90s or 10m".to_owned()),
    }
}

/// Parses a duration written as numbers with units `h`, `m` or `s`, like
/// `90s`, `10m` or `1h30m`.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("{text:?} is not a duration (expected numbers with units h, m or s, like 90s, 10m or 1h30m)");

    let mut total: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        let unit_seconds = match rest[digits..].chars().next() {
            Some('h') => 3600,
            Some('m') => 60,
            Some('s') => 1,
            _ => return Err(invalid()),
        };
        let seconds = number.checked_mul(unit_seconds).ok_or_else(invalid)?;
        total = total.checked_add(seconds).ok_or_else(invalid)?;
        rest = &rest[digits + 1..];
    }

    if total == 0 {
        return Err(format!("{text:?} is zero; a command needs some time to run"));
    }
    Ok(Duration::from_secs(total))
}

/// Reads the outputs from the last non-empty stdout line, a JSON object
/// with `connection_info` (string), and optionally `flags` (array of
/// strings) and `flag` (string, added to the flags when missing there).
/// Unknown keys are ignored.
fn parse_outputs(stdout: &[u8]) -> Result<Outputs, String> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().map(str::trim).rfind(|line| !line.is_empty()).ok_or_else(|| {
        r#"stdout is empty, but its last non-empty line must be a JSON object like {"connection_info": "nc 127.0.0.1 1337"}"#
            .to_owned()
    })?;
    let value: Json = serde_json::from_str(line)
        .map_err(|err| format!("the last non-empty stdout line is not JSON ({err}): {}", excerpt(line)))?;
    let Json::Object(object) = value else {
        return Err(format!("the last non-empty stdout line is JSON but not an object: {}", excerpt(line)));
    };

    let connection_info = match object.get("connection_info") {
        Some(Json::String(info)) if info.trim().is_empty() => return Err("`connection_info` is empty".to_owned()),
        Some(Json::String(info)) => info.clone(),
        Some(other) => return Err(format!("`connection_info` must be a string, found {}", json_kind(other))),
        None => return Err("`connection_info` is missing from the output object".to_owned()),
    };
    let mut flags = parse_flags(object.get("flags"))?;
    match object.get("flag") {
        None | Some(Json::Null) => {}
        Some(Json::String(flag)) if flag.is_empty() => return Err("`flag` is empty".to_owned()),
        Some(Json::String(flag)) => {
            if !flags.contains(flag) {
                flags.push(flag.clone());
            }
        }
        Some(other) => return Err(format!("`flag` must be a string, found {}", json_kind(other))),
    }

    Ok(Outputs { connection_info, flags })
}

fn parse_flags(value: Option<&Json>) -> Result<Vec<String>, String> {
    let items = match value {
        None | Some(Json::Null) => return Ok(Vec::new()),
        Some(Json::Array(items)) => items,
        Some(other) => return Err(format!("`flags` must be an array of strings, found {}", json_kind(other))),
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item {
            Json::String(flag) if flag.is_empty() => Err(format!("`flags[{index}]` is empty")),
            Json::String(flag) => Ok(flag.clone()),
            other => Err(format!("`flags[{index}]` must be a string, found {}", json_kind(other))),
        })
        .collect()
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Quotes the start of a line for an error message.
fn excerpt(line: &str) -> String {
    match line.char_indices().nth(OUTPUT_EXCERPT_CHARS) {
        Some((end, _)) => format!("{:?}…", &line[..end]),
        None => format!("{line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn scenario_path() -> PathBuf {
        PathBuf::from("/scenario").join(SCENARIO_FILE)
    }

    fn load_text(text: &str) -> Result<ExecRunner, Error> {
        let file: ScenarioFile = serde_norway::from_str(text)
            .map_err(|err| Error::InvalidFile { path: scenario_path(), reason: err.to_string() })?;
        ExecRunner::validate(&scenario_path(), file)
    }

    #[test]
    fn timeout_forms() {
        let cases = [
            ("90s", 90),
            ("10m", 600),
            ("1h", 3600),
            ("1h30m", 5400),
            ("2m30s", 150),
            // Units may repeat; the parts add up.
            ("1m1m", 120),
        ];
        for (text, seconds) in cases {
            assert_eq!(parse_timeout(text), Ok(Duration::from_secs(seconds)), "{text}");
        }
    }

    #[test]
    fn timeout_rejects_malformed() {
        for text in ["", "90", "s", "10 m", "1.5m", "10d", "-5s", "0s", "0m0s", "99999999999999999999h"] {
            let error = parse_timeout(text).expect_err(text);
            assert!(error.contains(&format!("{text:?}")), "{text}: {error}");
        }
    }

    #[test]
    fn scenario_file_defaults_timeout() {
        let runner = load_text("runtime: exec\nup: sh up.sh\ndown: sh down.sh\n").unwrap();

        assert_eq!(runner, ExecRunner { up: "sh up.sh".into(), down: "sh down.sh".into(), timeout: DEFAULT_TIMEOUT });
    }

    #[test]
    fn scenario_file_reads_timeout() {
        let runner = load_text("runtime: exec\nup: sh up.sh\ndown: sh down.sh\ntimeout: 90s\n").unwrap();

        assert_eq!(runner.timeout(), Duration::from_secs(90));
    }

    #[test]
    fn scenario_file_bare_number_timeout_hints_unit() {
        let error = load_text("runtime: exec\nup: a\ndown: b\ntimeout: 90\n").unwrap_err().to_string();

        assert!(error.contains("field `timeout`"), "{error}");
        assert!(error.contains("\"90s\""), "{error}");
    }

    #[test]
    fn outputs_with_flags_and_legacy_flag() {
        let stdout = b"deploying\n{\"connection_info\":\"nc host 1\",\"flags\":[\"a\",\"b\"],\"flag\":\"c\"}\n\n  \n";

        let outputs = parse_outputs(stdout).unwrap();

        assert_eq!(outputs.connection_info, "nc host 1");
        assert_eq!(outputs.flags, ["a", "b", "c"]);
    }

    #[test]
    fn outputs_legacy_flag_not_duplicated() {
        let outputs = parse_outputs(br#"{"connection_info":"x","flags":["a"],"flag":"a"}"#).unwrap();

        assert_eq!(outputs.flags, ["a"]);
    }

    #[test]
    fn outputs_without_flags() {
        let outputs = parse_outputs(br#"{"connection_info":"x","extra":1}"#).unwrap();

        assert_eq!(outputs, Outputs { connection_info: "x".into(), flags: vec![] });
    }

    #[test]
    fn outputs_rejects_malformed() {
        let cases: [(&str, &[u8], &str); 10] = [
            ("empty stdout", b"\n \n", "stdout is empty"),
            ("last line not JSON", b"{\"connection_info\":\"x\"}\ndone\n", "not JSON"),
            ("JSON array", b"[1]", "not an object"),
            ("connection_info missing", br#"{"flags":["a"]}"#, "`connection_info` is missing"),
            (
                "connection_info number",
                br#"{"connection_info":5}"#,
                "`connection_info` must be a string, found a number",
            ),
            ("connection_info blank", br#"{"connection_info":" "}"#, "`connection_info` is empty"),
            (
                "flags string",
                br#"{"connection_info":"x","flags":"a"}"#,
                "`flags` must be an array of strings, found a string",
            ),
            (
                "flags number item",
                br#"{"connection_info":"x","flags":["a",2]}"#,
                "`flags[1]` must be a string, found a number",
            ),
            ("flags empty item", br#"{"connection_info":"x","flags":[""]}"#, "`flags[0]` is empty"),
            ("flag number", br#"{"connection_info":"x","flag":true}"#, "`flag` must be a string, found a boolean"),
        ];
        for (name, stdout, expected) in cases {
            let error = parse_outputs(stdout).expect_err(name);
            assert!(error.contains(expected), "{name}: {error}");
        }
    }
}
