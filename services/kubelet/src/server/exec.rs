//! Running a command in a container. Non-interactive commands (no stdin,
//! no terminal) go through CRI `ExecSync`: the runtime runs the command to
//! its end and hands back its output and exit code.
//!
//! Interactive ones (stdin or a terminal) go through CRI `Exec`, which
//! answers with a URL on the runtime's streaming server; [`Session`] speaks
//! to it over SPDY (`v4.channel.k8s.io`, see [`super::spdy`] for why not
//! WebSocket) and bridges it to the gRPC streams: stdin and resizes in,
//! stdout, stderr and the exit code out.

use bytes::Bytes;
use futures::StreamExt;
use k8s_cri::v1::{ContainerState, ExecRequest};
use serde_json::Value;
use skiff_api::proto::{exec_input, exec_output, ExecInput, ExecOutput, ExecStart};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::cri::{self, ContainerRef, Instance};
use super::spdy::{self, Frame, FrameReader, FrameWriter};
use super::ServerError;
use crate::runtime::ContainerRuntime;

/// Reads the `ExecStart` every exec call begins with.
pub async fn read_start(inbound: &mut Streaming<ExecInput>) -> Result<ExecStart, Status> {
    match inbound.next().await {
        Some(Ok(ExecInput { input: Some(exec_input::Input::Start(start)) })) => Ok(start),
        Some(Ok(_)) | None => Err(ServerError::BadRequest("the first exec message must be the start".into()).into()),
        Some(Err(status)) => Err(status),
    }
}

/// Checks what an exec asks for before anything runs.
pub fn check(start: &ExecStart) -> Result<(), ServerError> {
    if start.command.is_empty() || start.command[0].is_empty() {
        return Err(ServerError::BadRequest("exec: a command is required".into()));
    }
    Ok(())
}

/// Whether the exec needs the runtime's streaming server.
pub fn is_interactive(start: &ExecStart) -> bool {
    start.tty || start.stdin
}

/// The running container `start` names.
async fn running_container(runtime: &dyn ContainerRuntime, start: &ExecStart) -> Result<String, ServerError> {
    let target = ContainerRef { namespace: &start.namespace, pod: &start.pod, container: &start.container };
    let container = cri::find_container(runtime, &target, Instance::Current).await?;
    if container.state != ContainerState::ContainerRunning as i32 {
        return Err(ServerError::NotRunning {
            namespace: start.namespace.clone(),
            pod: start.pod.clone(),
            container: start.container.clone(),
        });
    }
    Ok(container.id)
}

/// Runs the command to completion: its stdout, its stderr, then its exit
/// code, as the messages of the reply.
pub async fn run_sync(runtime: &dyn ContainerRuntime, start: &ExecStart) -> Result<Vec<ExecOutput>, ServerError> {
    check(start)?;
    let container_id = running_container(runtime, start).await?;
    // No deadline: the command runs as long as it runs, as with kubectl.
    let reply = runtime.exec_sync(&container_id, start.command.clone(), None).await?;
    Ok(outputs(reply.stdout, reply.stderr, reply.exit_code))
}

fn outputs(stdout: Vec<u8>, stderr: Vec<u8>, exit_code: i32) -> Vec<ExecOutput> {
    let mut out = Vec::new();
    if !stdout.is_empty() {
        out.push(ExecOutput { output: Some(exec_output::Output::Stdout(Bytes::from(stdout))) });
    }
    if !stderr.is_empty() {
        out.push(ExecOutput { output: Some(exec_output::Output::Stderr(Bytes::from(stderr))) });
    }
    out.push(ExecOutput { output: Some(exec_output::Output::ExitCode(exit_code)) });
    out
}

// === impl Session ===

/// Ctrl-D: the default VEOF of a terminal in canonical mode.
const TERMINAL_EOF: u8 = 0x04;

/// The SPDY streams of one interactive exec (client stream ids are odd and
/// rise in the order the streams open, as client-go opens them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Streams {
    error: u32,
    stdin: Option<u32>,
    stdout: u32,
    stderr: Option<u32>,
    resize: Option<u32>,
}

impl Streams {
    /// Error, stdin, stdout, stderr, resize: the ones the streaming server
    /// waits for given the exec's options (a terminal has no stderr of its
    /// own and takes resizes).
    fn for_exec(stdin: bool, tty: bool) -> Self {
        let mut next = 1;
        let mut open = |wanted: bool| {
            wanted.then(|| {
                let id = next;
                next += 2;
                id
            })
        };
        let error = open(true).unwrap_or(1);
        let stdin = open(stdin);
        let stdout = open(true).unwrap_or(3);
        let stderr = open(!tty);
        let resize = open(tty);
        // `resize` is there exactly when the session has a terminal.
        Self { error, stdin, stdout, stderr, resize }
    }

    fn all(&self) -> impl Iterator<Item = (u32, &'static str)> {
        [
            (Some(self.error), "error"),
            (self.stdin, "stdin"),
            (Some(self.stdout), "stdout"),
            (self.stderr, "stderr"),
            (self.resize, "resize"),
        ]
        .into_iter()
        .filter_map(|(id, kind)| id.map(|id| (id, kind)))
    }
}

/// An interactive exec connected to the runtime's streaming server, its
/// streams opened; [`Session::run`] pumps it.
pub struct Session {
    reader: FrameReader,
    writer: FrameWriter,
    streams: Streams,
}

/// Stream handling that failed past the start: the call ends with it.
fn stream_error(reason: impl std::fmt::Display) -> Status {
    ServerError::StreamFailed(reason.to_string()).into()
}

impl Session {
    /// Asks the runtime for the exec (CRI `Exec`), dials the URL it answers
    /// and opens the streams: errors here are the call's own status.
    pub async fn start(runtime: &dyn ContainerRuntime, start: &ExecStart) -> Result<Self, ServerError> {
        check(start)?;
        let container_id = running_container(runtime, start).await?;
        let request = ExecRequest {
            container_id,
            cmd: start.command.clone(),
            tty: start.tty,
            stdin: start.stdin,
            stdout: true,
            // A terminal merges stderr into stdout; CRI refuses both.
            stderr: !start.tty,
        };
        let url = runtime.exec_url(request).await?;
        let (reader, mut writer) = spdy::connect(&url).await?;
        let streams = Streams::for_exec(start.stdin, start.tty);
        for (id, kind) in streams.all() {
            writer
                .syn_stream(id, &[("streamType", kind)])
                .await
                .map_err(|e| ServerError::Stream { url: url.clone(), reason: format!("opening stream {kind}: {e}") })?;
        }
        Ok(Self { reader, writer, streams })
    }

    /// Bridges the session until the command ends, the client leaves
    /// (`out` closes) or the kubelet stops: `inbound` stdin and resizes to
    /// the runtime, its stdout and stderr to `out`, then the exit code.
    pub async fn run(
        self,
        mut inbound: Streaming<ExecInput>,
        out: mpsc::Sender<Result<ExecOutput, Status>>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let Session { reader, mut writer, streams } = self;
        // Polled across loop turns, so a frame half read is never dropped.
        let frames = futures::stream::unfold(reader, |mut r| async move {
            let next = r.next().await.transpose()?;
            Some((next, r))
        });
        let mut frames = std::pin::pin!(frames);
        let mut stopped = std::pin::pin!(async move {
            let _ = stopping.wait_for(|s| *s).await;
        });
        let mut replies_pending = streams.all().count();
        let mut inbound_open = true;
        let mut status = Vec::new();
        let send = |o| ExecOutput { output: Some(o) };
        loop {
            tokio::select! {
                frame = frames.next() => match frame {
                    None => break,
                    Some(Err(e)) => {
                        let _ = out.send(Err(stream_error(e))).await;
                        return;
                    }
                    Some(Ok(Frame::Data { stream, fin, data })) => {
                        if stream == streams.error {
                            status.extend_from_slice(&data);
                            if fin {
                                break;
                            }
                            continue;
                        }
                        // Empty writes only say the server is ready.
                        if data.is_empty() {
                            continue;
                        }
                        let output = if stream == streams.stdout {
                            exec_output::Output::Stdout(data)
                        } else if Some(stream) == streams.stderr {
                            exec_output::Output::Stderr(data)
                        } else {
                            continue;
                        };
                        if out.send(Ok(send(output))).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Frame::Control { kind, payload, .. })) => match kind {
                        spdy::kind::SYN_REPLY => replies_pending = replies_pending.saturating_sub(1),
                        spdy::kind::PING => {
                            if let Err(e) = writer.pong(&payload).await {
                                tracing::debug!(error = %e, "exec: answering a ping");
                            }
                        }
                        // The server is done: the status came before it.
                        spdy::kind::GOAWAY => {
                            tracing::debug!(status = ?spdy::status_code(&payload), "exec: the runtime went away");
                            break;
                        }
                        spdy::kind::RST_STREAM if Frame::control_stream(&payload) == Some(streams.error) => break,
                        _ => {}
                    },
                },
                // Input waits until the server has taken every stream: it
                // drops data on a stream it has not answered yet.
                input = inbound.next(), if inbound_open && replies_pending == 0 => {
                    if let Err(e) = forward(&mut writer, &streams, input, &mut inbound_open).await {
                        // The server stopped reading (the command ended):
                        // what it wrote back still comes.
                        tracing::debug!(error = %e, "exec: writing to the runtime");
                        inbound_open = false;
                    }
                }
                _ = out.closed() => return,
                () = &mut stopped => {
                    let _ = out.send(Err(ServerError::ShuttingDown.into())).await;
                    return;
                }
            }
        }
        let last = match exit_code(&status) {
            Ok(code) => Ok(send(exec_output::Output::ExitCode(code))),
            Err(message) => Err(ServerError::ExecFailed(message).into()),
        };
        let _ = out.send(last).await;
    }
}

/// One message of the caller's: stdin to the stdin stream, a resize to the
/// resize stream; the end of the caller's stream closes stdin.
async fn forward(
    writer: &mut FrameWriter,
    streams: &Streams,
    input: Option<Result<ExecInput, Status>>,
    open: &mut bool,
) -> std::io::Result<()> {
    match input.and_then(Result::ok).and_then(|m| m.input) {
        Some(exec_input::Input::Stdin(data)) => match streams.stdin {
            Some(id) if !data.is_empty() => writer.data(id, &data, false).await,
            _ => Ok(()),
        },
        Some(exec_input::Input::Resize(size)) => match streams.resize {
            Some(id) => writer.data(id, &spdy::resize_message(size.width, size.height), false).await,
            None => Ok(()),
        },
        // A second start means nothing now.
        Some(exec_input::Input::Start(_)) => Ok(()),
        // The caller's input ended (or failed): stdin reaches EOF. On a
        // terminal that is its EOF character, as typed: closing stdin would
        // hang the terminal up (containerd's shim closes the console when
        // stdin closes) and lose what the command writes after.
        None => {
            *open = false;
            match streams.stdin {
                Some(id) if streams.resize.is_some() => writer.data(id, &[TERMINAL_EOF], false).await,
                Some(id) => writer.data(id, &[], true).await,
                None => Ok(()),
            }
        }
    }
}

/// The exit code in the v4 status JSON of the error stream:
/// `{"status":"Success"}` is 0; a `NonZeroExitCode` failure carries it as
/// the `ExitCode` cause's message. Any other failure (the command could not
/// start) is its message.
fn exit_code(status: &[u8]) -> Result<i32, String> {
    if status.is_empty() {
        return Err("exec: the runtime's stream ended without the command's exit status".into());
    }
    let v: Value =
        serde_json::from_slice(status).map_err(|_| format!("exec: {}", String::from_utf8_lossy(status).trim()))?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    if v["reason"] == "NonZeroExitCode" {
        let causes = v.pointer("/details/causes").and_then(Value::as_array).into_iter().flatten();
        if let Some(code) = causes
            .filter(|c| c["reason"] == "ExitCode")
            .find_map(|c| c["message"].as_str().and_then(|m| m.trim().parse().ok()))
        {
            return Ok(code);
        }
    }
    Err(v["message"].as_str().map_or_else(|| format!("exec failed: {v}"), String::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(command: &[&str], tty: bool, stdin: bool) -> ExecStart {
        ExecStart {
            namespace: "default".into(),
            pod: "p".into(),
            container: "c".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
        }
    }

    /// A fake runtime running container `c` of pod default/p.
    async fn runtime_with_container(started: bool) -> crate::runtime::fake::FakeRuntime {
        use crate::runtime::{labels, proto};
        let rt = crate::runtime::fake::FakeRuntime::with_images(&["busybox"]);
        let sandbox = rt.run_sandbox(proto::PodSandboxConfig::default()).await.unwrap();
        let config = proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata { name: "c".into(), attempt: 0 }),
            labels: [(labels::POD_NAMESPACE, "default"), (labels::POD_NAME, "p"), (labels::CONTAINER_NAME, "c")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            ..Default::default()
        };
        let id = rt.create_container(&sandbox, config, proto::PodSandboxConfig::default()).await.unwrap();
        if started {
            rt.start_container(&id).await.unwrap();
        }
        rt
    }

    #[tokio::test]
    async fn a_sync_exec_answers_output_then_exit_code() {
        let rt = runtime_with_container(true).await;
        let out = run_sync(&rt, &start(&["echo", "hi"], false, false)).await.unwrap();
        let outputs: Vec<_> = out.into_iter().map(|o| o.output.unwrap()).collect();
        assert_eq!(
            outputs,
            [exec_output::Output::Stdout(Bytes::from_static(b"hi\n")), exec_output::Output::ExitCode(0)]
        );
        let failed = run_sync(&rt, &start(&["false"], false, false)).await.unwrap();
        assert_eq!(failed.last().and_then(|o| o.output.clone()), Some(exec_output::Output::ExitCode(1)));
    }

    #[tokio::test]
    async fn exec_needs_a_running_container_of_that_name() {
        let created = runtime_with_container(false).await;
        let err = run_sync(&created, &start(&["echo"], false, false)).await.unwrap_err();
        assert!(matches!(err, ServerError::NotRunning { .. }), "{err:?}");
        assert_eq!(Status::from(err).code(), tonic::Code::FailedPrecondition);

        let running = runtime_with_container(true).await;
        let mut other = start(&["echo"], false, false);
        other.container = "other".into();
        let err = run_sync(&running, &other).await.unwrap_err();
        assert_eq!(Status::from(err).code(), tonic::Code::NotFound);
    }

    #[test]
    fn refuses_empty_commands() {
        assert!(check(&start(&["echo", "hi"], false, false)).is_ok());
        assert!(check(&start(&["sh"], true, true)).is_ok());
        assert_eq!(check(&start(&[], false, false)).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(check(&start(&[""], false, false)).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert!(is_interactive(&start(&["cat"], false, true)));
        assert!(is_interactive(&start(&["sh"], true, false)));
        assert!(!is_interactive(&start(&["echo"], false, false)));
    }

    #[test]
    fn streams_open_in_client_go_order() {
        let s = Streams::for_exec(true, false);
        assert_eq!(s, Streams { error: 1, stdin: Some(3), stdout: 5, stderr: Some(7), resize: None });
        let s = Streams::for_exec(true, true);
        assert_eq!(s, Streams { error: 1, stdin: Some(3), stdout: 5, stderr: None, resize: Some(7) });
        let s = Streams::for_exec(false, true);
        assert_eq!(s, Streams { error: 1, stdin: None, stdout: 3, stderr: None, resize: Some(5) });
        assert_eq!(s.all().map(|(_, k)| k).collect::<Vec<_>>(), ["error", "stdout", "resize"]);
    }

    #[test]
    fn exit_codes_come_from_the_v4_status() {
        assert_eq!(exit_code(br#"{"metadata":{},"status":"Success"}"#), Ok(0));
        let failed = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: 7",
            "reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#;
        assert_eq!(exit_code(failed), Ok(7));
        let internal = br#"{"status":"Failure","message":"executable file not found","reason":"InternalError"}"#;
        assert_eq!(exit_code(internal), Err("executable file not found".into()));
        assert!(exit_code(b"").unwrap_err().contains("without the command's exit status"));
    }

    #[test]
    fn output_then_exit_code_last() {
        let out = outputs(b"hi\n".to_vec(), Vec::new(), 3);
        assert_eq!(
            out.into_iter().map(|o| o.output.unwrap()).collect::<Vec<_>>(),
            [exec_output::Output::Stdout(Bytes::from_static(b"hi\n")), exec_output::Output::ExitCode(3)]
        );
    }
}
