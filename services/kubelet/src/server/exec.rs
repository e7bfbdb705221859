//! Running a command in a container. Non-interactive commands (no stdin,
//! no terminal) go through CRI `ExecSync`: the runtime runs the command to
//! its end and hands back its output and exit code.
//!
//! Interactive ones (stdin or a terminal) need CRI `Exec`, which answers
//! with a URL on the runtime's streaming server spoken to over SPDY or
//! WebSocket (`v4.channel.k8s.io`). That bridge is not built yet: such
//! calls fail with UNIMPLEMENTED and say so.

use bytes::Bytes;
use futures::StreamExt;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ContainerState, ExecSyncRequest};
use skiff_api::proto::{exec_input, exec_output, ExecInput, ExecOutput, ExecStart};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::cri::{self, ContainerRef, Instance};
use super::ServerError;

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
    if start.tty || start.stdin {
        return Err(ServerError::Unimplemented(
            "interactive exec (stdin or a terminal) is not supported yet: run the command without -i/-t".into(),
        ));
    }
    Ok(())
}

/// Runs the command to completion: its stdout, its stderr, then its exit
/// code, as the messages of the reply.
pub async fn run_sync(
    runtime: &mut RuntimeServiceClient<Channel>,
    start: &ExecStart,
) -> Result<Vec<ExecOutput>, ServerError> {
    check(start)?;
    let target = ContainerRef { namespace: &start.namespace, pod: &start.pod, container: &start.container };
    let container = cri::find_container(runtime, &target, Instance::Current).await?;
    if container.state != ContainerState::ContainerRunning as i32 {
        return Err(ServerError::NotRunning {
            namespace: start.namespace.clone(),
            pod: start.pod.clone(),
            container: start.container.clone(),
        });
    }
    let reply = runtime
        .exec_sync(ExecSyncRequest { container_id: container.id, cmd: start.command.clone(), timeout: 0 })
        .await
        .map_err(|status| ServerError::Runtime { call: "ExecSync", status })?
        .into_inner();
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

    #[test]
    fn refuses_empty_commands_and_interactive_sessions() {
        assert!(check(&start(&["echo", "hi"], false, false)).is_ok());
        assert_eq!(check(&start(&[], false, false)).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(check(&start(&[""], false, false)).unwrap_err().code(), tonic::Code::InvalidArgument);
        let err = check(&start(&["sh"], true, true)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        assert!(err.to_string().contains("interactive exec"), "{err}");
        assert_eq!(check(&start(&["cat"], false, true)).unwrap_err().code(), tonic::Code::Unimplemented);
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
