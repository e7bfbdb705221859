//! `skiffctl exec POD [-c C] [-i] [-t] -- CMD...`: runs a command in a
//! container through the apiserver's PodProxy, prints its output and exits
//! with its exit status.
//!
//! With `-i` local stdin streams to the command (its end closes the
//! command's stdin). With `-t` the command gets a terminal: its size is sent
//! at the start and again on each SIGWINCH, and when stdin is a terminal
//! too (`-it`) it is put in raw mode for the session and restored after,
//! error or not. When stdin is not a terminal, `-t` still gives the remote
//! command a terminal and leaves the local side alone (kubectl would drop
//! the terminal with a warning; scripts that ask for one get one here).

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use rustix::termios::{self, OptionalActions, Termios};
use skiff_api::proto::{exec_input, exec_output, ExecInput, ExecStart, TerminalSize};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::logs::{container_for, pod_name};
use super::{proxy_error, ExitStatus, Globals};

/// Bytes read from stdin per message.
const STDIN_CHUNK: usize = 32 * 1024;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pod (NAME or pod/NAME).
    pub pod: String,
    /// The container (default: the pod's default-container annotation, else its first).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass stdin to the command; its end closes the command's stdin.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Give the command a terminal (raw mode locally when stdin is one too).
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
    // What we send: the start, the terminal's size, stdin. The stream ends
    // when stdin does (-i), else when the session does (this sender).
    let (tx, rx) = mpsc::channel(16);
    let _ = tx.send(message(exec_input::Input::Start(start))).await;
    if args.tty {
        if let Some(size) = terminal_size() {
            let _ = tx.send(message(exec_input::Input::Resize(size))).await;
        }
    }
    let resizes = tx.downgrade();
    let keep_open = if args.stdin {
        read_stdin(tx);
        None
    } else {
        Some(tx)
    };
    let mut winch =
        if args.tty { Some(signal(SignalKind::window_change()).context("watching SIGWINCH")?) } else { None };
    // Restored when this returns, whichever way.
    let _raw =
        if args.tty && args.stdin && termios::isatty(std::io::stdin()) { Some(RawMode::enable()?) } else { None };

    let mut stream = globals.pod_proxy()?.exec(ReceiverStream::new(rx)).await.map_err(proxy_error)?.into_inner();
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    loop {
        tokio::select! {
            next = stream.next() => {
                let Some(next) = next else { break };
                match next.map_err(proxy_error)?.output {
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
            Some(()) = async { winch.as_mut()?.recv().await }, if winch.is_some() => {
                if let (Some(size), Some(tx)) = (terminal_size(), resizes.upgrade()) {
                    let _ = tx.send(message(exec_input::Input::Resize(size))).await;
                }
            }
        }
    }
    drop(keep_open);
    bail!("the command's output ended without its exit status")
}

fn message(input: exec_input::Input) -> ExecInput {
    ExecInput { input: Some(input) }
}

/// Sends stdin to `tx` until it ends (then `tx` drops, ending the stream)
/// or the session is over. A thread of its own: a blocking read of stdin
/// can't be cancelled, and tokio's blocking pool would hold up the exit
/// until it returned.
fn read_stdin(tx: mpsc::Sender<ExecInput>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0; STDIN_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let data = buf[..n].to_vec().into();
                    if tx.blocking_send(message(exec_input::Input::Stdin(data))).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
}

// === terminal ===

/// The local terminal's size (stdout's, else stdin's), if either is one.
fn terminal_size() -> Option<TerminalSize> {
    let size = termios::tcgetwinsize(std::io::stdout()).or_else(|_| termios::tcgetwinsize(std::io::stdin())).ok()?;
    (size.ws_col > 0 && size.ws_row > 0)
        .then(|| TerminalSize { width: u32::from(size.ws_col), height: u32::from(size.ws_row) })
}

/// Stdin's terminal in raw mode (keys go to the remote terminal as they
/// are typed, Ctrl-C included) until dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enable() -> Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw).context("putting the terminal in raw mode")?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Nothing better to do if it fails: the session is over either way.
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}
