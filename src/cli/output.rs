//! Printing results: tables and summaries for people, or the JSON the REST
//! API returns for scripts. Results go to stdout; spinners and errors go to
//! stderr, so piping stdout keeps only the result.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    time::Duration,
};

use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use serde::Serialize;
use tabled::{
    Table, Tabled,
    settings::{Padding, Style, object::Segment},
};

use super::{error::Error, parse::format_timeout};
use crate::{api, challenge::ChallengeInfo, instance::Instance, time::format_timestamp};

/// Output format of a command's result.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Tables for lists, a short summary for one item
    #[default]
    Table,
    /// The JSON the REST API returns; lists are JSON arrays
    Json,
}

#[derive(clap::Args, Clone, Debug)]
pub struct OutputArgs {
    /// Output format
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Tabled)]
struct ChallengeRow {
    #[tabled(rename = "ID")]
    id: String,
    #[tabled(rename = "SCENARIO")]
    scenario: String,
    #[tabled(rename = "TIMEOUT")]
    timeout: String,
    #[tabled(rename = "UNTIL")]
    until: String,
    #[tabled(rename = "INSTANCES")]
    instances: usize,
    #[tabled(rename = "MIN")]
    min: i64,
    #[tabled(rename = "MAX")]
    max: i64,
}

#[derive(Tabled)]
struct InstanceRow {
    #[tabled(rename = "CHALLENGE")]
    challenge: String,
    #[tabled(rename = "SOURCE")]
    source: String,
    #[tabled(rename = "CONNECTION")]
    connection: String,
    #[tabled(rename = "SINCE")]
    since: String,
    #[tabled(rename = "UNTIL")]
    until: String,
}

/// Renders a list of challenges.
pub fn render_challenges(format: Format, challenges: &[ChallengeInfo]) -> Result<String, Error> {
    match format {
        Format::Json => to_json(&challenges.iter().map(api::json::challenge).collect::<Vec<_>>()),
        Format::Table => Ok(render_table(challenges.iter().map(challenge_row))),
    }
}

/// Renders one challenge: its fields, then a table of its instances.
pub fn render_challenge(format: Format, info: &ChallengeInfo) -> Result<String, Error> {
    if format == Format::Json {
        return to_json(&api::json::challenge(info));
    }

    let challenge = &info.challenge;
    let mut fields = vec![("id", challenge.id.clone()), ("scenario", challenge.scenario.clone())];
    // The gRPC API does not return the digest, so it is only known locally.
    if !challenge.digest.is_empty() {
        fields.push(("digest", challenge.digest.clone()));
    }
    fields.extend([
        ("timeout", format_optional_timeout(challenge.timeout.as_ref())),
        ("until", format_until(challenge.until.as_ref())),
        ("additional", format_additional(&challenge.additional)),
        ("min", challenge.min.to_string()),
        ("max", if challenge.max == 0 { "0 (no limit)".to_owned() } else { challenge.max.to_string() }),
        ("claimed", info.instances.len().to_string()),
    ]);
    // Unknown for a server that does not send the count.
    if let Some(pooled) = info.pooled {
        fields.push(("pooled", pooled.to_string()));
    }

    let mut text = render_fields(&fields);
    if !info.instances.is_empty() {
        text.push('\n');
        text.push_str(&render_table(info.instances.iter().map(instance_row)));
    }
    Ok(text)
}

/// Renders a list of instances.
pub fn render_instances(format: Format, instances: &[Instance]) -> Result<String, Error> {
    match format {
        Format::Json => to_json(&instances.iter().map(api::json::instance).collect::<Vec<_>>()),
        Format::Table => Ok(render_table(instances.iter().map(instance_row))),
    }
}

/// Renders one instance: how to reach it, its flags and its lifetime.
pub fn render_instance(format: Format, instance: &Instance) -> Result<String, Error> {
    if format == Format::Json {
        return to_json(&api::json::instance(instance));
    }

    let flags = if instance.flags.is_empty() { "none".to_owned() } else { instance.flags.join("\n") };
    let fields = [
        ("challenge", instance.challenge_id.clone()),
        ("source", instance.source_id.clone()),
        ("connection", instance.connection_info.clone()),
        ("flags", flags),
        ("since", format_timestamp(&instance.since)),
        ("last renew", format_timestamp(&instance.last_renew)),
        ("until", format_until(instance.until.as_ref())),
        ("additional", format_additional(&instance.additional)),
    ];
    Ok(render_fields(&fields))
}

/// Renders the result of a deletion: a sentence, or `{}` like the REST API.
pub fn render_deleted(format: Format, subject: &str) -> Result<String, Error> {
    match format {
        Format::Json => Ok("{}\n".to_owned()),
        Format::Table => Ok(format!("{subject} deleted\n")),
    }
}

/// Renders a pushed scenario: the pinned reference alone, so that
/// `$(chall-manager challenge push ...)` can feed `--scenario`.
pub fn render_pushed(format: Format, pinned_reference: &str, digest: &str) -> Result<String, Error> {
    #[derive(Serialize)]
    struct Pushed<'a> {
        reference: &'a str,
        digest: &'a str,
    }

    match format {
        Format::Json => to_json(&Pushed { reference: pinned_reference, digest }),
        Format::Table => Ok(format!("{pinned_reference}\n")),
    }
}

/// Writes a rendered result to stdout. A closed pipe (`| head`) is not an
/// error: the reader has what it wanted.
pub fn print(text: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Output(err)),
        _ => Ok(()),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, Error> {
    let mut text = serde_json::to_string_pretty(value).map_err(|err| Error::Output(err.into()))?;
    text.push('\n');
    Ok(text)
}

fn challenge_row(info: &ChallengeInfo) -> ChallengeRow {
    let challenge = &info.challenge;
    ChallengeRow {
        id: challenge.id.clone(),
        scenario: challenge.scenario.clone(),
        timeout: format_optional_timeout(challenge.timeout.as_ref()),
        until: format_until(challenge.until.as_ref()),
        instances: info.instances.len(),
        min: challenge.min,
        max: challenge.max,
    }
}

fn instance_row(instance: &Instance) -> InstanceRow {
    InstanceRow {
        challenge: instance.challenge_id.clone(),
        source: instance.source_id.clone(),
        connection: instance.connection_info.clone(),
        since: format_timestamp(&instance.since),
        until: format_until(instance.until.as_ref()),
    }
}

/// Renders rows as a borderless table with a header line, like `kubectl get`.
fn render_table<R: Tabled>(rows: impl IntoIterator<Item = R>) -> String {
    let mut table = Table::new(rows);
    table.with(Style::empty()).modify(Segment::all(), Padding::new(0, 3, 0, 0));
    trim_line_ends(&table.to_string())
}

/// Renders `name value` lines with the values aligned; the lines of a
/// multi-line value are indented under its first line.
fn render_fields(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 2;
    let mut text = String::new();
    for (name, value) in fields {
        let mut lines = value.lines();
        text.push_str(&format!("{name:width$}{}\n", lines.next().unwrap_or("")));
        for line in lines {
            text.push_str(&format!("{:width$}{line}\n", ""));
        }
    }
    trim_line_ends(&text)
}

fn trim_line_ends(text: &str) -> String {
    text.lines().map(|line| format!("{}\n", line.trim_end())).collect()
}

fn format_optional_timeout(timeout: Option<&Duration>) -> String {
    timeout.map_or_else(|| "none".to_owned(), format_timeout)
}

fn format_until(until: Option<&DateTime<Utc>>) -> String {
    until.map_or_else(|| "never".to_owned(), format_timestamp)
}

fn format_additional(additional: &BTreeMap<String, String>) -> String {
    if additional.is_empty() {
        return "none".to_owned();
    }
    additional.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join("\n")
}

/// A spinner on stderr while a long operation runs. It draws only when
/// stderr is a terminal, and disappears when dropped.
pub struct Spinner(ProgressBar);

impl Spinner {
    pub fn start(message: &str) -> Self {
        let bar = if std::io::stderr().is_terminal() { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        Self(bar)
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{challenge::Challenge, time::parse_timestamp};

    fn challenge_info() -> ChallengeInfo {
        let challenge = Challenge {
            id: "web-1".into(),
            scenario: "registry.example/web:v1".into(),
            digest: String::new(),
            timeout: Some(Duration::from_secs(600)),
            until: None,
            additional: BTreeMap::new(),
            min: 0,
            max: 0,
        };
        ChallengeInfo { challenge, instances: vec![], pooled: Some(2) }
    }

    #[test]
    fn challenge_table_has_header_and_row() {
        let text = render_challenges(Format::Table, &[challenge_info()]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("ID "), "{text}");
        assert!(lines[1].starts_with("web-1 "), "{text}");
        assert!(lines[1].contains("10m"), "{text}");
        assert!(lines[1].contains("never"), "{text}");
    }

    #[test]
    fn empty_json_list_is_an_empty_array() {
        assert_eq!(render_challenges(Format::Json, &[]).unwrap(), "[]\n");
        assert_eq!(render_instances(Format::Json, &[]).unwrap(), "[]\n");
    }

    #[test]
    fn instance_summary_lists_flags_under_each_other() {
        let instance = Instance {
            challenge_id: "web-1".into(),
            source_id: "team-3".into(),
            identity: "0123456789abcdef".into(),
            since: parse_timestamp("2026-01-02T03:04:05Z").unwrap(),
            last_renew: parse_timestamp("2026-01-02T03:04:05Z").unwrap(),
            until: None,
            connection_info: "nc 127.0.0.1 1337".into(),
            flags: vec!["FLAG{a}".into(), "FLAG{b}".into()],
            additional: BTreeMap::new(),
            deployed: Default::default(),
        };
        let text = render_instance(Format::Table, &instance).unwrap();
        assert!(text.contains("connection  nc 127.0.0.1 1337\n"), "{text}");
        assert!(text.contains("flags       FLAG{a}\n            FLAG{b}\n"), "{text}");
        assert!(text.contains("until       never\n"), "{text}");
    }
}
