//! A network namespace made for one test (`ip netns add ketch-st-<random>`,
//! loopback up), removed on drop, and TCP servers listening inside it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use nix::sched::CloneFlags;

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let mut raw = [0u8; 6];
        getrandom::fill(&mut raw).unwrap();
        let name = format!(
            "ketch-st-{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Binds a listener on 127.0.0.1:0 inside the namespace (from a thread
    /// that enters it; the socket keeps the namespace).
    pub fn listen(&self) -> TcpListener {
        let path = self.path();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?} failed");
}

/// Serves a TCP echo on `listener` (thread per connection) and returns its
/// port. The greeting, when given, is sent first on every connection.
pub fn echo_server(listener: TcpListener, greeting: Option<&'static [u8]>) -> u16 {
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                if let Some(g) = greeting {
                    let _ = conn.write_all(g);
                }
                let mut buf = [0u8; 16384];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// Serves `size` bytes of a repeating pattern to every connection, then
/// closes it.
pub fn source_server(listener: TcpListener, size: usize) -> u16 {
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
                let _ = conn.write_all(&data);
            });
        }
    });
    port
}
