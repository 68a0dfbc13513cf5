//! What the integration tests start: a `redis-server` and the service binary on loopback ports,
//! and Debian's python3 with grpcio.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[path = "../common/ports.rs"]
mod ports;
pub use ports::free_port;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Debian's python3 with `grpc` and `google.protobuf` (python3-grpcio, python3-protobuf), by
/// absolute path first: a python3 earlier on PATH (pyenv, a venv) does not see Debian's modules.
/// Fails, never skips, when there is none.
pub fn grpc_python() -> PathBuf {
    for candidate in ["/usr/bin/python3", "python3"] {
        let works = Command::new(candidate)
            .args(["-c", "import grpc, google.protobuf"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "no python3 with grpcio and protobuf: run `scripts/debian-deps grpc` (Debian's python3-grpcio and python3-protobuf)"
    );
}

/// A `redis-server` of one test: its own port and directory, no persistence, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (Debian's redis-server: scripts/debian-deps redis)");
            let mut redis = Redis {
                port,
                child,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if redis.child.try_wait().ok().flatten().is_some() {
                    break; // the port was taken meanwhile: another one
                }
                let pong = redis::Client::open(redis.url())
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
                if pong.is_ok() {
                    return redis;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Keys matching a glob pattern.
    pub fn count_keys(&self, pattern: &str) -> usize {
        let mut connection = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut connection)
            .expect("KEYS");
        keys.len()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `c2p-enroll` binary (sandbox mode unless `env` says otherwise) with a clean environment
/// plus `env`, its output in a file; killed on drop.
pub struct Service {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    /// Starts it and waits until it listens.
    pub fn start(env: &[(&str, String)]) -> Service {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("service.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_c2p-enroll"))
            .env_clear()
            .env("C2P_METRICS__LISTEN", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("spawn c2p-enroll");
        let mut service = Service {
            child,
            log,
            _dir: dir,
        };
        // Debug builds generate the simulator's RSA keys at start.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !service.output().contains("gRPC listening") {
            // A service that cannot start (its port taken, a setting refused) exits at once:
            // say so with its output rather than wait out the deadline.
            if let Some(status) = service.child.try_wait().expect("wait") {
                panic!(
                    "the service exited ({status}) before it listened:\n{}",
                    service.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the service did not listen within 60 s:\n{}",
                service.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        service
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (a drain), then its exit status within `within`.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not exit within {within:?} of SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `bytes` to `dir/name`.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write a temp file");
    path
}

/// `c2p-enroll sandbox` alone (the Mastercard simulator) with a faults file, its keys in a
/// temp dir; killed on drop. A service in mastercard mode talks to it with [`Simulator::env`].
pub struct Simulator {
    child: Child,
    dir: tempfile::TempDir,
}

impl Simulator {
    /// Starts it with `faults` (TOML, README "The Mastercard simulator") and its TAR/TCN going
    /// to `notify` (a gRPC URL), and waits until it wrote its `service.env`.
    pub fn start(faults: &str, notify: &str) -> Simulator {
        let dir = tempfile::tempdir().expect("temp dir");
        let faults_file = write(dir.path(), "faults.toml", faults.as_bytes());
        let keys = dir.path().join("keys");
        let log = std::fs::File::create(dir.path().join("simulator.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_c2p-enroll"))
            .env_clear()
            .arg("sandbox")
            .arg("--dir")
            .arg(&keys)
            .args(["--listen", "127.0.0.1:0", "--notify", notify])
            .arg("--faults")
            .arg(&faults_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn c2p-enroll sandbox");
        let mut simulator = Simulator { child, dir };
        // Debug builds generate the simulator's RSA keys at start.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !simulator.output().contains("SIMULATOR running alone") {
            if let Some(status) = simulator.child.try_wait().expect("wait") {
                panic!(
                    "the simulator exited ({status}) before it ran:\n{}",
                    simulator.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the simulator did not start within 60 s:\n{}",
                simulator.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        simulator
    }

    /// The `C2P_*` settings of a service in mastercard mode that talks to it.
    pub fn env(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.dir.path().join("keys/service.env"))
            .expect("service.env")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("simulator.log")).unwrap_or_default()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A service whose port is taken exits at once; its start says so with the service's own
/// words instead of waiting out the 60 s deadline (the CI failure of `own_time` at `aa67598`
/// spent ~60 s in one test before it failed).
#[test]
fn a_service_that_cannot_listen_is_reported_with_its_output() {
    let port = free_port();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let started = std::panic::catch_unwind(|| {
        Service::start(&[("C2P_GRPC__LISTEN", format!("127.0.0.1:{port}"))])
    });
    let panic = started.err().expect("a service on a taken port started");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("exited") && message.contains("Address already in use"),
        "{message}"
    );
}
