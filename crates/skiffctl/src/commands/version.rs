//! `skiffctl version`.

pub fn run() {
    println!("Client Version: v{}", env!("CARGO_PKG_VERSION"));
}
