//! What the bench refuses to print: each variant is a figure that would
//! not have been measured.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{figure}: {value} is not a measurement")]
    NotFinite { figure: String, value: f64 },
    #[error("{figure}: the baseline is {baseline}, so there is nothing to compare with")]
    NoBaseline { figure: String, baseline: f64 },
    #[error("recording a sample")]
    Record {
        #[source]
        source: hdrhistogram::RecordError,
    },
    #[error("no {what} was recorded, so it has no quantiles")]
    NoSamples { what: &'static str },
    #[error("{name} has no process to read")]
    NoProcess { name: String },
    #[error("reading {path}: is {name} (pid {pid}) gone?")]
    ReadStat {
        name: String,
        pid: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} (pid {pid}) has exited (state {state})")]
    Exited { name: String, pid: u32, state: char },
    #[error("/proc/PID/stat: no {field} field in {stat:?}")]
    StatFormat { field: &'static str, stat: String },
    #[error("{tool} is not on PATH or in /usr/sbin: {hint}")]
    ToolMissing { tool: &'static str, hint: &'static str },
}
