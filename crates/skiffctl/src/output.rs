//! skiffctl's stdout. A reader that goes away (`skiffctl get pods | head -1`)
//! ends skiffctl quietly with status 141, 128 + SIGPIPE, as the signal ends
//! kubectl; `println!` would panic there ("failed printing to stdout").

use std::io::Write;

/// The status a shell reports for a process that SIGPIPE ended.
pub const BROKEN_PIPE_STATUS: u8 = 141;

/// `print!` to stdout, ending skiffctl quietly when the reader is gone.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), false) };
}

/// `println!` to stdout, ending skiffctl quietly when the reader is gone.
macro_rules! outln {
    () => { $crate::output::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), true) };
}

pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| if newline { stdout.write_all(b"\n") } else { Ok(()) });
    if let Err(error) = written {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_STATUS.into());
        }
        eprintln!("error: writing to stdout: {error}");
        std::process::exit(1);
    }
}

/// Whether `error` came from writing to a reader that is gone.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}
