//! Processes and ports for tests that run the binary or other programs.

/// A child process stopped by its PID (through the handle, never by name) when dropped.
#[derive(Debug)]
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port: bound and released, so the next bind takes it (for programs that
/// cannot be told to bind port 0 and report it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("invariant: loopback has free ports")
}
