//! Running one shell command in its own process group, with a timeout.
//!
//! The command gets a new process group so that everything it starts can be
//! stopped together: on timeout, and when the caller drops the future, the
//! whole group receives SIGTERM, then SIGKILL after [`KILL_GRACE`]. After a
//! normal exit the group is left alone, because processes that `up` leaves
//! in the background are the challenge service.

use std::{
    collections::VecDeque,
    ffi::OsString,
    fmt,
    path::Path,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{debug, info, warn};

use super::{Error, Step};

/// Time between SIGTERM and SIGKILL when a process group is stopped. Long
/// enough for a script to run its cleanup trap, short enough that a stuck
/// one does not hold a deployment slot for long.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// Time to keep reading stdout and stderr after the command exited. A
/// background process it started may hold the pipes open for its whole
/// life, so EOF cannot be waited for. 100 ms covers output still in flight
/// from processes that exit along with the command.
const PIPE_GRACE: Duration = Duration::from_millis(100);

/// Bytes of stdout kept: the output line is the last non-empty one, so only
/// the end matters, but a JSON object with many flags can be long.
const STDOUT_TAIL_BYTES: usize = 1024 * 1024;

/// Bytes of stderr kept, far more than [`STDERR_TAIL_LINES`] normal lines.
const STDERR_TAIL_BYTES: usize = 64 * 1024;

/// Lines of stderr an error message shows.
const STDERR_TAIL_LINES: usize = 20;

/// Characters of one stderr line an error message shows.
const STDERR_LINE_CHARS: usize = 500;

/// Time between checks whether a terminated process group is empty.
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Size of one read from a pipe.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// A command to run with `/bin/sh -c`.
pub(super) struct ShellCommand<'a> {
    pub step: Step,
    pub command: &'a str,
    pub dir: &'a Path,
    /// Variables added to the inherited environment.
    pub env: Vec<(&'static str, OsString)>,
    pub timeout: Duration,
}

/// A command that exited with status 0.
#[derive(Debug)]
pub(super) struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: StderrTail,
}

/// Runs a command in a new process group and collects its output.
///
/// Returns once the command exited and its pipes reached EOF, or
/// [`PIPE_GRACE`] after it exited, whichever comes first. Pipes still open
/// then (held by background processes) keep being drained, and their data is
/// dropped, so that writers do not get SIGPIPE.
///
/// # Errors
///
/// Fails if the command cannot be started, exits with a non-zero status or
/// times out. On timeout the process group is terminated and this returns
/// once the group is empty or was sent SIGKILL. If the returned future is
/// dropped before it completes, the group is terminated in the background.
pub(super) async fn run(command: ShellCommand<'_>) -> Result<Finished, Error> {
    let step = command.step;
    let started = Instant::now();
    let mut child = spawn(&command)?;
    let group = GroupGuard::new(&child);
    debug!(pid = child.id(), "started scenario command");

    let mut stdout = PipeReader::new(child.stdout.take(), STDOUT_TAIL_BYTES);
    let mut stderr = PipeReader::new(child.stderr.take(), STDERR_TAIL_BYTES);
    let waited = wait_and_read(&mut child, &mut stdout, &mut stderr, command.timeout).await;

    let status = match waited {
        Waited::Exited(status) => status,
        Waited::Failed(error) => {
            // The guard's drop terminates the group: its state is unknown.
            return Err(Error::Io { step, action: "wait for", error });
        }
        Waited::TimedOut => {
            warn!(timeout_s = command.timeout.as_secs(), "scenario command timed out, terminating its process group");
            group.terminate_and_wait(&mut child).await;
            return Err(Error::TimedOut { step, timeout: command.timeout, stderr: stderr.into_stderr_tail() });
        }
    };

    group.release();
    stdout.drain_in_background();
    stderr.drain_in_background();
    info!(status = %status, elapsed_ms = started.elapsed().as_millis() as u64, "scenario command exited");

    let stderr = stderr.into_stderr_tail();
    if !status.success() {
        return Err(Error::Exited { step, status, stderr });
    }
    Ok(Finished { status, stdout: stdout.into_bytes(), stderr })
}

fn spawn(command: &ShellCommand<'_>) -> Result<tokio::process::Child, Error> {
    tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command.command)
        .current_dir(command.dir)
        .envs(command.env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|error| Error::Io { step: command.step, action: "start", error })
}

/// How waiting for a command ended.
enum Waited {
    Exited(ExitStatus),
    TimedOut,
    Failed(std::io::Error),
}

/// Waits up to `timeout` for the child to exit while reading both pipes,
/// then gives the pipes [`PIPE_GRACE`] to reach EOF. The grace is not part
/// of the timeout, so a command that exits just in time is not killed.
async fn wait_and_read<O, E>(
    child: &mut tokio::process::Child,
    stdout: &mut PipeReader<O>,
    stderr: &mut PipeReader<E>,
    timeout: Duration,
) -> Waited
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let readers = async { tokio::try_join!(stdout.read_to_eof(), stderr.read_to_eof()) };
    tokio::pin!(readers);
    let mut pipes_closed = false;

    let exit = async {
        loop {
            tokio::select! {
                status = child.wait() => return status,
                read = &mut readers, if !pipes_closed => {
                    read?;
                    pipes_closed = true;
                }
            }
        }
    };
    let status = match tokio::time::timeout(timeout, exit).await {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => return Waited::Failed(error),
        Err(_elapsed) => return Waited::TimedOut,
    };

    // Read errors after the exit only cut the output short.
    if !pipes_closed && tokio::time::timeout(PIPE_GRACE, &mut readers).await.is_err() {
        debug!("background processes keep stdout or stderr open, no longer waiting for EOF");
    }
    Waited::Exited(status)
}

/// Kills a process group when dropped, unless released.
#[must_use = "dropping the guard terminates the process group"]
struct GroupGuard {
    group: Option<Pid>,
}

impl GroupGuard {
    /// Guards the group the child leads (it was spawned with
    /// `process_group(0)`, so its pid is the group id).
    fn new(child: &tokio::process::Child) -> Self {
        let group = child.id().and_then(|pid| Pid::from_raw(pid as i32));
        Self { group }
    }

    /// Leaves the group running.
    fn release(mut self) {
        self.group = None;
    }

    /// Sends SIGTERM to the group, waits up to [`KILL_GRACE`] for it to
    /// empty, then sends SIGKILL. Reaps the child meanwhile, because a
    /// zombie still counts as a member. If this future is dropped, the
    /// guard's drop takes over.
    async fn terminate_and_wait(mut self, child: &mut tokio::process::Child) {
        let Some(group) = self.group else { return };
        if !send_signal(group, Signal::TERM) {
            self.group = None;
            let _ = child.wait().await;
            return;
        }

        let deadline = Instant::now() + KILL_GRACE;
        while Instant::now() < deadline {
            let _ = child.try_wait();
            if rustix::process::test_kill_process_group(group).is_err() {
                self.group = None;
                return;
            }
            tokio::time::sleep(GROUP_POLL_INTERVAL).await;
        }

        debug!("process group outlived SIGTERM, sending SIGKILL");
        self.group = None;
        send_signal(group, Signal::KILL);
        let _ = child.wait().await;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            terminate_group(group);
        }
    }
}

/// Sends SIGTERM to a process group now and SIGKILL after [`KILL_GRACE`] if
/// any member is left. The SIGKILL comes from a thread so that it happens
/// even when this runs in a `Drop` with no async runtime to wait in.
///
/// NOTE: a group id names no process once the group is empty and may then
/// be reused. The thread checks every [`GROUP_POLL_INTERVAL`] and stops as
/// soon as the group is gone, which leaves only that window for a reuse.
fn terminate_group(group: Pid) {
    if !send_signal(group, Signal::TERM) {
        return;
    }

    let spawned = std::thread::Builder::new().name("kill-process-group".to_owned()).spawn(move || {
        let deadline = Instant::now() + KILL_GRACE;
        while Instant::now() < deadline {
            if rustix::process::test_kill_process_group(group).is_err() {
                return;
            }
            std::thread::sleep(GROUP_POLL_INTERVAL);
        }
        send_signal(group, Signal::KILL);
    });
    if let Err(err) = spawned {
        warn!(error = %err, "failed to start the SIGKILL thread, sending SIGKILL now");
        send_signal(group, Signal::KILL);
    }
}

/// Signals every process of a group. Returns whether the group existed.
fn send_signal(group: Pid, signal: Signal) -> bool {
    match rustix::process::kill_process_group(group, signal) {
        Ok(()) => true,
        Err(rustix::io::Errno::SRCH) => false,
        Err(err) => {
            warn!(pgid = group.as_raw_nonzero().get(), signal = ?signal, error = %err, "failed to signal a process group");
            true
        }
    }
}

/// Reads one pipe and keeps the last bytes of what it read.
struct PipeReader<R> {
    pipe: Option<R>,
    tail: TailBuffer,
}

impl<R: AsyncRead + Unpin> PipeReader<R> {
    fn new(pipe: Option<R>, limit: usize) -> Self {
        Self { pipe, tail: TailBuffer::new(limit) }
    }

    /// Reads until EOF. Cancel-safe: what was read stays in the buffer.
    async fn read_to_eof(&mut self) -> std::io::Result<()> {
        let mut chunk = vec![0; READ_CHUNK_BYTES];
        while let Some(pipe) = self.pipe.as_mut() {
            let read = pipe.read(&mut chunk).await?;
            if read == 0 {
                self.pipe = None;
            } else {
                self.tail.extend(&chunk[..read]);
            }
        }
        Ok(())
    }

    fn into_stderr_tail(self) -> StderrTail {
        let truncated = self.tail.truncated;
        StderrTail::from_bytes(&self.tail.into_bytes(), truncated)
    }

    fn into_bytes(self) -> Vec<u8> {
        self.tail.into_bytes()
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> PipeReader<R> {
    /// Keeps reading a pipe that is still open until EOF, discarding the
    /// data, so that a background writer never gets SIGPIPE from a closed
    /// pipe. The task ends with the writer, or when the runtime shuts down.
    fn drain_in_background(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await;
            });
        }
    }
}

/// The last `limit` bytes written to it.
struct TailBuffer {
    bytes: VecDeque<u8>,
    limit: usize,
    /// Whether bytes were dropped from the front.
    truncated: bool,
}

impl TailBuffer {
    fn new(limit: usize) -> Self {
        Self { bytes: VecDeque::new(), limit, truncated: false }
    }

    fn extend(&mut self, data: &[u8]) {
        self.bytes.extend(data);
        let excess = self.bytes.len().saturating_sub(self.limit);
        if excess > 0 {
            self.bytes.drain(..excess);
            self.truncated = true;
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        self.bytes.into()
    }
}

/// The last lines a command wrote to stderr, for error messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StderrTail {
    /// A boxed slice, not a `Vec`, keeps [`Error`] small.
    lines: Box<[String]>,
    /// Whether earlier lines were left out.
    omitted: bool,
}

impl StderrTail {
    /// Keeps the last [`STDERR_TAIL_LINES`] lines, without blank lines at
    /// either end or trailing whitespace. `truncated` means that `bytes` is
    /// the end of a longer output, so its first line may be partial.
    fn from_bytes(bytes: &[u8], truncated: bool) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let mut lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        if truncated && !lines.is_empty() {
            lines.remove(0);
        }
        while lines.last().is_some_and(|line| line.is_empty()) {
            lines.pop();
        }
        let first_text = lines.iter().position(|line| !line.is_empty()).unwrap_or(lines.len());
        lines.drain(..first_text);

        let skip = lines.len().saturating_sub(STDERR_TAIL_LINES);
        Self {
            lines: lines[skip..].iter().map(|line| shorten(line, STDERR_LINE_CHARS)).collect(),
            omitted: truncated || skip > 0,
        }
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}

const DIVIDER: &str = "----------------------------------------";

impl fmt::Display for StderrTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lines.is_empty() {
            return f.write_str("stderr was empty");
        }
        if self.omitted && self.lines.len() == 1 {
            writeln!(f, "stderr (last line):")?;
        } else if self.omitted {
            writeln!(f, "stderr (last {} lines):", self.lines.len())?;
        } else {
            writeln!(f, "stderr:")?;
        }
        writeln!(f, "{DIVIDER}")?;
        for line in &*self.lines {
            writeln!(f, "{line}")?;
        }
        f.write_str(DIVIDER)
    }
}

/// Cuts a line to `max` characters, marking the cut.
fn shorten(line: &str, max: usize) -> String {
    match line.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_tail_keeps_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i:02}\n")).collect();
        let tail = StderrTail::from_bytes(text.as_bytes(), false);

        assert_eq!(tail.lines().len(), STDERR_TAIL_LINES);
        assert_eq!(tail.lines().first().map(String::as_str), Some("line 11"));
        assert_eq!(tail.lines().last().map(String::as_str), Some("line 30"));
        assert!(tail.to_string().starts_with("stderr (last 20 lines):\n"));
    }

    #[test]
    fn stderr_tail_trims_blank_lines() {
        let tail = StderrTail::from_bytes(b"\n\n  first  \nsecond\t\n\n\n", false);

        assert_eq!(tail.lines(), ["  first", "second"]);
        assert_eq!(tail.to_string(), format!("stderr:\n{DIVIDER}\n  first\nsecond\n{DIVIDER}"));
    }

    #[test]
    fn stderr_tail_of_blank_output_is_empty() {
        for text in [&b""[..], b"\n \n\t\n"] {
            let tail = StderrTail::from_bytes(text, false);

            assert!(tail.lines().is_empty());
            assert_eq!(tail.to_string(), "stderr was empty");
        }
    }

    #[test]
    fn stderr_tail_drops_partial_first_line() {
        let tail = StderrTail::from_bytes(b"tial line\nwhole line\n", true);

        assert_eq!(tail.lines(), ["whole line"]);
        assert!(tail.to_string().starts_with("stderr (last line):"));
    }

    #[test]
    fn stderr_tail_shortens_long_lines() {
        let long = "é".repeat(STDERR_LINE_CHARS + 10);
        let tail = StderrTail::from_bytes(long.as_bytes(), false);

        assert_eq!(tail.lines()[0].chars().count(), STDERR_LINE_CHARS + 1);
        assert!(tail.lines()[0].ends_with('…'));
    }

    #[test]
    fn tail_buffer_keeps_last_bytes() {
        let mut buffer = TailBuffer::new(4);
        buffer.extend(b"abc");
        assert!(!buffer.truncated);
        buffer.extend(b"def");

        assert!(buffer.truncated);
        assert_eq!(buffer.into_bytes(), b"cdef");
    }
}
