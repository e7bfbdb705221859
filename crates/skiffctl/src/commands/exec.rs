//! `skiffctl exec POD [-c C] [-i] [-t] -- CMD...`: runs a command in a
//! container through the apiserver's PodProxy, prints its output and exits
//! with its exit status.

use std::io::Write;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use skiff_api::proto::{exec_input, exec_output, ExecInput, ExecStart};

use super::logs::{container_for, pod_name};
use super::{proxy_error, ExitStatus, Globals};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pod (NAME or pod/NAME).
    pub pod: String,
    /// The container (default: the pod's default-container annotation, else its first).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass stdin to the command (not supported by the kubelet yet).
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Give the command a terminal (not supported by the kubelet yet).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments, after `--`.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let pod = pod_name(&args.pod)?;
    let container = container_for(&globals.client()?, &globals.namespace, pod, args.container).await?;
    let start = ExecStart {
        namespace: globals.namespace.clone(),
        pod: pod.to_string(),
        container,
        command: args.command,
        tty: args.tty,
        stdin: args.stdin,
    };
    let first = ExecInput { input: Some(exec_input::Input::Start(start)) };
    let mut stream = globals.pod_proxy()?.exec(futures::stream::iter([first])).await.map_err(proxy_error)?.into_inner();
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    while let Some(message) = stream.next().await {
        match message.map_err(proxy_error)?.output {
            Some(exec_output::Output::Stdout(data)) => {
                stdout.write_all(&data).and_then(|()| stdout.flush()).context("writing stdout")?
            }
            Some(exec_output::Output::Stderr(data)) => {
                stderr.write_all(&data).and_then(|()| stderr.flush()).context("writing stderr")?
            }
            Some(exec_output::Output::ExitCode(0)) => return Ok(()),
            // A shell's status is 0-255; anything else still fails.
            Some(exec_output::Output::ExitCode(code)) => {
                return Err(ExitStatus(u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1)).into())
            }
            None => {}
        }
    }
    bail!("the command's output ended without its exit status")
}
