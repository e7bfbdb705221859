//! `skiffctl version`.

pub fn run() {
    outln!("Client Version: v{}", env!("CARGO_PKG_VERSION"));
}
