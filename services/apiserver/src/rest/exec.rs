//! `pods/exec` over WebSocket, as kubectl 1.32 speaks it (and `kubectl cp`,
//! which is exec running tar): the subprotocol `v5.channel.k8s.io` (or
//! `v4`), binary messages whose first byte is the channel — 0 stdin, 1
//! stdout, 2 stderr, 3 the final Status, 4 terminal resizes (JSON
//! `{"Width":…,"Height":…}`), and in v5 255 "close": `[255, 0]` is the
//! client's end of stdin.
//!
//! The session is the gRPC API's (`PodProxyService::exec_session`): it is
//! authorized, resolved to the pod's kubelet and started before the
//! connection is upgraded, so a refusal is an ordinary HTTP error.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};
use skiff_api::proto::{exec_input, exec_output, ExecInput, ExecOutput, ExecStart, TerminalSize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::path::Target;
use super::status::Failure;
use super::{Call, Reply, Rest};

/// The subprotocols served, preferred first.
const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Stdin messages buffered towards the kubelet.
const INPUT_BUFFER: usize = 16;

impl Rest {
    pub(super) async fn exec(&self, call: &Call, t: &Target, upgrade: Option<hyper::upgrade::OnUpgrade>) -> Reply {
        let key = call.headers.get(header::SEC_WEBSOCKET_KEY).map(HeaderValue::as_bytes);
        let offered = call.header(header::SEC_WEBSOCKET_PROTOCOL);
        let protocol = PROTOCOLS.iter().find(|p| offered.split(',').any(|o| o.trim() == **p));
        let (Some(key), Some(protocol), Some(upgrade)) = (key, protocol, upgrade) else {
            return Err(Failure::bad_request(format!(
                "exec is served over WebSocket (Upgrade: websocket) with subprotocol {}",
                PROTOCOLS.join(" or ")
            )));
        };
        let start = ExecStart {
            namespace: t.namespace.clone(),
            pod: t.name.clone().unwrap_or_default(),
            container: call.param("container").into(),
            command: call.query_all("command"),
            tty: call.flag("tty"),
            stdin: call.flag("stdin"),
        };
        if start.command.is_empty() {
            return Err(Failure::bad_request("command: Required value: you must specify at least 1 command"));
        }
        let (input, inbound) = mpsc::channel(INPUT_BUFFER);
        let request = call.grpc(());
        let outputs = self
            .pods
            .exec_session(call.user.clone(), request.metadata().clone(), start, ReceiverStream::new(inbound))
            .await
            .map_err(|s| Failure::from_status(&s, Some(t)))?;
        let v5 = *protocol == PROTOCOLS[0];
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let socket = hyper_util::rt::TokioIo::new(upgraded);
                    let socket = WebSocketStream::from_raw_socket(socket, Role::Server, None).await;
                    bridge(socket, input, outputs, v5).await;
                }
                Err(e) => tracing::debug!(error = %e, "exec: the upgrade failed"),
            }
        });
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        let accept = HeaderValue::from_str(&derive_accept_key(key)).map_err(super::internal)?;
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        Ok(response)
    }
}

/// Carries the client's stdin and resizes to the session, and its output
/// and final status back, until the command exits or the client leaves.
async fn bridge<S>(
    socket: WebSocketStream<S>,
    input: mpsc::Sender<ExecInput>,
    mut outputs: impl futures::Stream<Item = Result<ExecOutput, tonic::Status>> + Unpin,
    v5: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut messages) = socket.split();
    let reader = tokio::spawn(async move {
        // Dropping the sender ends the session's stdin.
        let mut input = Some(input);
        while let Some(Ok(message)) = messages.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else { continue };
            let sent = match channel {
                STDIN => Some(exec_input::Input::Stdin(Bytes::copy_from_slice(payload))),
                RESIZE => resize(payload).map(exec_input::Input::Resize),
                CLOSE if v5 && payload.first() == Some(&STDIN) => {
                    input = None;
                    None
                }
                _ => None,
            };
            if let (Some(sent), Some(to)) = (sent, &input) {
                if to.send(ExecInput { input: Some(sent) }).await.is_err() {
                    input = None;
                }
            }
        }
    });
    let mut status = json!({"metadata": {}, "status": "Success"});
    while let Some(output) = outputs.next().await {
        let (channel, data) = match output.map(|o| o.output) {
            Ok(Some(exec_output::Output::Stdout(data))) => (STDOUT, data),
            Ok(Some(exec_output::Output::Stderr(data))) => (STDERR, data),
            Ok(Some(exec_output::Output::ExitCode(code))) => {
                if code != 0 {
                    status = exit_status(code);
                }
                continue;
            }
            Ok(None) => continue,
            Err(failure) => {
                status = Failure::from_status(&failure, None).body;
                break;
            }
        };
        if sink.send(framed(channel, &data)).await.is_err() {
            reader.abort();
            return;
        }
    }
    let _ = sink.send(framed(ERROR, status.to_string().as_bytes())).await;
    // A normal closure: without a code, clients read the end as an error.
    let normal = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    let _ = sink.send(Message::Close(Some(normal))).await;
    reader.abort();
}

fn framed(channel: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    Message::Binary(frame.into())
}

fn resize(payload: &[u8]) -> Option<TerminalSize> {
    let size: Value = serde_json::from_slice(payload).ok()?;
    let dimension = |name| size.get(name).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
    Some(TerminalSize { width: dimension("Width")?, height: dimension("Height")? })
}

/// The Status kubectl reads a command's non-zero exit code from.
fn exit_status(code: i32) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_statuses() {
        assert_eq!(framed(STDOUT, b"hi"), Message::Binary(Bytes::from_static(&[1, b'h', b'i'])));
        assert_eq!(resize(br#"{"Width":80,"Height":24}"#), Some(TerminalSize { width: 80, height: 24 }));
        assert_eq!(resize(b"nonsense"), None);
        let status = exit_status(3);
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        assert_eq!(status["reason"], "NonZeroExitCode");
    }
}
