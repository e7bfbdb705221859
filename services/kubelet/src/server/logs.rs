//! Container logs from the CRI log file the runtime writes for each
//! container (`ContainerStatus.log_path`), in the CRI logging format:
//!
//! ```text
//! 2024-05-01T10:00:00.123456789Z stdout F a whole line
//! 2024-05-01T10:00:00.223456789Z stderr P the start of a long line
//! 2024-05-01T10:00:00.223456790Z stderr F  and its end
//! ```
//!
//! Each file line is `TIMESTAMP STREAM TAGS MESSAGE`; tag `P` marks a
//! partial line the runtime split (over 16 KiB, or no newline yet), `F` the
//! fragment that ends it. [`LogParser`] strips the prefix and joins the
//! fragments; [`stream_logs`] tails and follows the file.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use k8s_cri::v1::ContainerState;
use skiff_api::proto::LogChunk;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::cri;
use super::ServerError;
use crate::runtime::ContainerRuntime;

/// How often a followed log is checked for new lines and the container for
/// having exited. The runtime gives no change notification over CRI.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Bytes read at once, and the most one chunk sent to the client holds.
const CHUNK: usize = 64 * 1024;

/// One whole log line: its timestamp (of its first fragment) and content
/// ending with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub timestamp: String,
    pub content: Vec<u8>,
}

impl LogLine {
    /// The line as a client sees it: with `timestamp ` before it if asked.
    fn render(&self, timestamps: bool, out: &mut Vec<u8>) {
        if timestamps && !self.timestamp.is_empty() {
            out.extend_from_slice(self.timestamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&self.content);
    }
}

/// Turns CRI log file bytes, fed in any pieces, into whole lines.
#[derive(Debug, Default)]
pub struct LogParser {
    /// Bytes after the last newline: a file line still being written.
    pending: Vec<u8>,
    /// Fragments of a `P`-tagged line waiting for its `F` fragment.
    partial: Option<LogLine>,
}

impl LogParser {
    pub fn feed(&mut self, data: &[u8]) -> Vec<LogLine> {
        self.pending.extend_from_slice(data);
        let Some(last_newline) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = self.pending.split_off(last_newline + 1);
        let complete = std::mem::replace(&mut self.pending, rest);
        let mut lines = Vec::new();
        for raw in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Some(line) = self.line(raw) {
                lines.push(line);
            }
        }
        lines
    }

    /// One file line (without its newline): a whole log line when it ends
    /// one, `None` while a partial line continues.
    fn line(&mut self, raw: &[u8]) -> Option<LogLine> {
        let Some((timestamp, partial, message)) = split_cri_line(raw) else {
            // Not CRI-formatted (a runtime bug or a foreign file): shown as
            // it is rather than lost.
            let mut content = raw.to_vec();
            content.push(b'\n');
            return Some(LogLine { timestamp: String::new(), content });
        };
        let line = self.partial.get_or_insert_with(|| LogLine { timestamp: timestamp.into(), content: Vec::new() });
        line.content.extend_from_slice(message);
        if partial {
            return None;
        }
        let mut line = self.partial.take()?;
        line.content.push(b'\n');
        Some(line)
    }
}

/// `TIMESTAMP STREAM TAGS MESSAGE` → (timestamp, is partial, message).
fn split_cri_line(raw: &[u8]) -> Option<(&str, bool, &[u8])> {
    let mut parts = raw.splitn(4, |&b| b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let stream = parts.next()?;
    if stream != b"stdout" && stream != b"stderr" {
        return None;
    }
    // Tags are `:`-separated; the first says partial (P) or full (F).
    let tags = parts.next()?;
    let partial = match tags.split(|&b| b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some((timestamp, partial, parts.next().unwrap_or_default()))
}

/// Keeps only the last `n` lines when `n` is set.
struct Tail {
    limit: Option<usize>,
    lines: VecDeque<LogLine>,
}

impl Tail {
    fn new(limit: Option<usize>) -> Self {
        Self { limit, lines: VecDeque::new() }
    }

    fn push(&mut self, line: LogLine) {
        if self.limit == Some(0) {
            return;
        }
        self.lines.push_back(line);
        if self.limit.is_some_and(|n| self.lines.len() > n) {
            self.lines.pop_front();
        }
    }
}

/// What a log stream shows.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub timestamps: bool,
}

/// Sends the log of container `id` at `path` to `tx`: the (tailed) lines
/// written so far, then, when following, new lines as they come until the
/// container has exited and its last lines are sent, the client leaves
/// (`tx` closes) or the server stops.
pub async fn stream_logs(
    runtime: Arc<dyn ContainerRuntime>,
    id: String,
    path: String,
    options: LogOptions,
    tx: mpsc::Sender<Result<LogChunk, Status>>,
    mut stopping: watch::Receiver<bool>,
) {
    let result: Result<(), ServerError> = async {
        let read_err = |source| ServerError::ReadLog { path: path.clone(), source };
        let mut file = tokio::fs::File::open(&path).await.map_err(read_err)?;
        let mut parser = LogParser::default();
        let mut buf = vec![0u8; CHUNK];
        // What is there now, tailed.
        let mut tail = Tail::new(options.tail_lines);
        loop {
            let n = file.read(&mut buf).await.map_err(read_err)?;
            if n == 0 {
                break;
            }
            parser.feed(&buf[..n]).into_iter().for_each(|l| tail.push(l));
        }
        if !send(&tx, tail.lines.into_iter().collect(), options.timestamps).await || !options.follow {
            return Ok(());
        }
        // Then what comes. The container is checked before the last read,
        // so lines it wrote just before exiting are not lost.
        loop {
            let exited = cri::container_status(runtime.as_ref(), &id)
                .await
                .map(|s| s.state == ContainerState::ContainerExited as i32)?;
            let mut lines = Vec::new();
            loop {
                let n = file.read(&mut buf).await.map_err(read_err)?;
                if n == 0 {
                    break;
                }
                lines.extend(parser.feed(&buf[..n]));
            }
            if !send(&tx, lines, options.timestamps).await || exited {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = tx.closed() => return Ok(()),
                _ = stopping.wait_for(|s| *s) => return Ok(()),
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(e.into())).await;
    }
}

/// Sends `lines` in chunks of at most about [`CHUNK`] bytes; false once the
/// client has gone.
async fn send(tx: &mpsc::Sender<Result<LogChunk, Status>>, lines: Vec<LogLine>, timestamps: bool) -> bool {
    let mut out = Vec::new();
    for line in lines {
        line.render(timestamps, &mut out);
        if out.len() >= CHUNK && tx.send(Ok(LogChunk { data: Bytes::from(std::mem::take(&mut out)) })).await.is_err() {
            return false;
        }
    }
    out.is_empty() || tx.send(Ok(LogChunk { data: Bytes::from(out) })).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: &[LogLine]) -> String {
        lines.iter().map(|l| String::from_utf8_lossy(&l.content).into_owned()).collect()
    }

    #[test]
    fn strips_the_prefix_and_keeps_spaces_in_messages() {
        let mut p = LogParser::default();
        let lines = p.feed(b"2024-05-01T10:00:00.1Z stdout F hello  world\n2024-05-01T10:00:00.2Z stderr F oops\n");
        assert_eq!(text(&lines), "hello  world\noops\n");
        assert_eq!(lines[0].timestamp, "2024-05-01T10:00:00.1Z");
        assert_eq!(lines[1].timestamp, "2024-05-01T10:00:00.2Z");
    }

    #[test]
    fn joins_partial_lines_with_the_first_fragments_timestamp() {
        let mut p = LogParser::default();
        let lines = p.feed(b"T1 stdout P abc\nT2 stdout P def\nT3 stdout F ghi\nT4 stdout F next\n");
        assert_eq!(text(&lines), "abcdefghi\nnext\n");
        assert_eq!(lines[0].timestamp, "T1");
        assert_eq!(lines[1].timestamp, "T4");
    }

    #[test]
    fn a_file_line_split_across_reads_waits_for_its_newline() {
        let mut p = LogParser::default();
        assert!(p.feed(b"T1 stdout F hel").is_empty());
        assert!(p.feed(b"lo").is_empty());
        let lines = p.feed(b"\nT2 stdout P par");
        assert_eq!(text(&lines), "hello\n");
        assert!(p.feed(b"tial\n").is_empty(), "a P fragment waits for its F");
        assert_eq!(text(&p.feed(b"T3 stdout F  end\n")), "partial end\n");
    }

    #[test]
    fn empty_messages_and_extra_tags() {
        let mut p = LogParser::default();
        // An empty line is `... F ` or `... F` with nothing after the tag.
        assert_eq!(text(&p.feed(b"T1 stdout F \nT2 stdout F\nT3 stdout F:x tagged\n")), "\n\ntagged\n");
    }

    #[test]
    fn foreign_lines_pass_through() {
        let mut p = LogParser::default();
        let lines = p.feed(b"not a cri line\n");
        assert_eq!(text(&lines), "not a cri line\n");
        assert_eq!(lines[0].timestamp, "");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut p = LogParser::default();
        let lines = p.feed(b"T stdout F 1\nT stdout F 2\nT stdout P 3\nT stdout F 3\nT stdout F 4\n");
        let tailed = |n| {
            let mut t = Tail::new(n);
            lines.iter().cloned().for_each(|l| t.push(l));
            text(&t.lines.into_iter().collect::<Vec<_>>())
        };
        assert_eq!(tailed(Some(2)), "33\n4\n");
        assert_eq!(tailed(Some(0)), "");
        assert_eq!(tailed(Some(10)), "1\n2\n33\n4\n");
        assert_eq!(tailed(None), "1\n2\n33\n4\n");
    }

    #[test]
    fn timestamps_prefix_each_line() {
        let line = LogLine { timestamp: "T1".into(), content: b"hi\n".to_vec() };
        let mut out = Vec::new();
        line.render(true, &mut out);
        line.render(false, &mut out);
        assert_eq!(out, b"T1 hi\nhi\n");
    }

    #[tokio::test]
    async fn chunks_hold_whole_lines() {
        let (tx, mut rx) = mpsc::channel(16);
        let big = LogLine { timestamp: String::new(), content: [vec![b'x'; CHUNK - 1], vec![b'\n']].concat() };
        assert!(send(&tx, vec![big.clone(), big.clone(), big], false).await);
        drop(tx);
        let mut sizes = Vec::new();
        while let Some(chunk) = rx.recv().await {
            let data = chunk.unwrap().data;
            assert_eq!(data.last(), Some(&b'\n'));
            sizes.push(data.len());
        }
        assert_eq!(sizes, [CHUNK, CHUNK, CHUNK]);
    }
}
