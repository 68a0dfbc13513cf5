//! Starts the real parts on loopback: a `redis-server` per test on a free port, the service
//! in-process on port 0 (or as its binary, for signal and exit-code tests), and gRPC clients.

use c2p_enroll::config::Settings;
use c2p_enroll::proto::v1::enrollment_service_client::EnrollmentServiceClient;
use c2p_enroll::sandbox::keys::SandboxKeys;
use c2p_enroll::sandbox::{Sandbox, SandboxConfig};
use c2p_enroll::server::{self, RunningServer};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

#[path = "../common/ports.rs"]
mod ports;
pub use ports::free_port;

/// What a TLS Redis with an ACL user needs, in a temp dir: a test CA, a server certificate
/// for 127.0.0.1 and localhost signed by it, and the user `app` with a random password
/// (the `default` user is off).
pub struct RedisTls {
    dir: tempfile::TempDir,
    password: String,
}

impl RedisTls {
    /// The ACL user the servers accept.
    pub const USER: &'static str = "app";

    /// A new CA, server certificate and password (each call: another CA).
    pub fn generate() -> Arc<RedisTls> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        c2p_enroll::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: another CA is not just another key under the same name.
        ca.distinguished_name.push(
            DnType::CommonName,
            format!("c2p-enroll test Redis CA {:016x}", rand::random::<u64>()),
        );
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let mut server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .expect("sign the server certificate");
        let tls = RedisTls {
            dir,
            password: format!("pw-{:032x}", rand::random::<u128>()),
        };
        std::fs::write(tls.ca_file(), ca_cert.pem()).expect("write ca.pem");
        std::fs::write(tls.cert_file(), server_cert.pem()).expect("write server.pem");
        std::fs::write(tls.key_file(), server_key.serialize_pem()).expect("write server.key");
        // As `echo` writes it: the service strips the trailing newline.
        std::fs::write(tls.password_file(), format!("{}\n", tls.password))
            .expect("write the password file");
        Arc::new(tls)
    }

    /// The PEM CA (`redis.ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The file holding the user's password (`redis.password_file`).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("redis.password")
    }

    /// The user's password (to check that no error shows it).
    pub fn password(&self) -> &str {
        &self.password
    }

    fn cert_file(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The certificates a test client checks the servers with.
    pub fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(self.ca_file()).expect("read ca.pem")),
        }
    }

    /// `redis-server` flags: TLS only (no plain port), the server certificate, no client
    /// certificates asked for, and only the ACL user.
    fn server_args(&self, port: u16) -> Vec<std::ffi::OsString> {
        let path = |p: PathBuf| p.into_os_string();
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        args.extend(["--port", "0", "--tls-port"].map(Into::into));
        args.push(port.to_string().into());
        args.push("--tls-cert-file".into());
        args.push(path(self.cert_file()));
        args.push("--tls-key-file".into());
        args.push(path(self.key_file()));
        args.push("--tls-ca-cert-file".into());
        args.push(path(self.ca_file()));
        args.extend(
            [
                "--tls-auth-clients",
                "no",
                "--user",
                "default",
                "off",
                "--user",
            ]
            .map(Into::into),
        );
        args.extend([Self::USER, "on"].map(Into::into));
        args.push(format!(">{}", self.password).into());
        args.extend(["~*", "&*", "+@all"].map(Into::into));
        args
    }

    /// A client of `url` (rediss://) as the user, checking the server against the CA.
    fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        use redis::IntoConnectionInfo as _;
        let info = url.into_connection_info()?;
        let auth = info
            .redis_settings()
            .clone()
            .set_username(Self::USER)
            .set_password(&self.password);
        redis::Client::build_with_tls(info.set_redis_settings(auth), self.certificates())
    }
}

/// A `redis-server` owned by one test: its own port, no persistence, killed on drop.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    /// TLS only, with the ACL user.
    tls: Option<Arc<RedisTls>>,
    /// Environment of the server process (e.g. its locale).
    env: Vec<(String, std::ffi::OsString)>,
}

impl RedisServer {
    /// Starts a fresh server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(None)
    }

    /// Starts a fresh server with extra `redis-server` flags, given after the defaults so that
    /// they win (e.g. `--appendonly yes --appendfsync always`: writes survive a kill -9 and a
    /// [`RedisServer::restart`] in the same directory).
    #[allow(dead_code)] // used by the chaos suite (tests/chaos)
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        require_binary("redis-server", "redis-server");
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                extra: args.iter().map(|a| a.to_string()).collect(),
                tls: None,
                env: Vec::new(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts a fresh TLS-only server with `tls`'s certificate and ACL user.
    pub fn start_tls(tls: &Arc<RedisTls>) -> RedisServer {
        Self::start_with(Some(tls.clone()))
    }

    fn start_with(tls: Option<Arc<RedisTls>>) -> RedisServer {
        require_binary("redis-server", "redis-server");
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                extra: Vec::new(),
                tls: tls.clone(),
                env: Vec::new(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts a fresh server whose C library collates strings as in American English
    /// (`en_US.UTF-8`: `a` < `B`, unlike bytes), as the servers of many hosts do; checks that
    /// its Lua compares strings that way. See [`collating_locale`].
    pub fn start_in_collating_locale() -> RedisServer {
        require_binary("redis-server", "redis-server");
        let (name, locpath) = collating_locale();
        let mut env: Vec<(String, std::ffi::OsString)> = ["LC_ALL", "LC_COLLATE", "LANG"]
            .into_iter()
            .map(|k| (k.to_owned(), name.clone().into()))
            .collect();
        if let Some(dir) = locpath {
            env.push(("LOCPATH".into(), dir.into_os_string()));
        }
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                extra: Vec::new(),
                tls: None,
                env: env.clone(),
            };
            if server.spawn() {
                let natural: i64 = redis::cmd("EVAL")
                    .arg("if 'a' < 'B' then return 1 end return 0")
                    .arg(0)
                    .query(&mut server.connection())
                    .expect("EVAL");
                assert_eq!(
                    natural, 1,
                    "redis-server did not take the locale {name}: its Lua still compares bytes"
                );
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// `redis://127.0.0.1:<port>/`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// A client as the tests connect: plain, or TLS as the ACL user.
    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls {
            Some(tls) => tls.client(&self.url()),
            None => redis::Client::open(self.url()),
        }
    }

    /// Kills the server (as a crash would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGSTOP (it answers nothing, closes nothing) until
    /// [`RedisServer::thaw`].
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a server stopped by [`RedisServer::freeze`] run again.
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// Sends the server a signal by name (STOP, CONT) with the `kill` utility.
    fn signal(&self, name: &str) {
        let Some(child) = &self.child else {
            panic!("redis-server on port {} is not running", self.port);
        };
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// A connection (TLS and the ACL user for a TLS server), for looking at what the service
    /// wrote.
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("connect to the test redis")
    }

    /// Waits (10 s at most) until `key` exists: a call in flight has taken a card's lock.
    pub async fn wait_for_key(&self, key: &str) {
        let mut conn = self.connection();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis::cmd("EXISTS")
            .arg(key)
            .query::<bool>(&mut conn)
            .expect("EXISTS")
        {
            assert!(Instant::now() < deadline, "{key} never appeared");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn spawn(&mut self) -> bool {
        let port_args: Vec<std::ffi::OsString> = match &self.tls {
            Some(tls) => tls.server_args(self.port),
            None => vec!["--port".into(), self.port.to_string().into()],
        };
        let child = Command::new("redis-server")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["--bind", "127.0.0.1"])
            .args(&port_args)
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false; // exited: most likely the port was taken meanwhile
            }
            let ping = self
                .client()
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `redis-server --cluster-enabled yes` nodes joined with `redis-cli --cluster create`: three
/// masters, and with [`RedisCluster::start_with_replicas`] one replica for each.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

/// A port `p` in 20000-22699 with `p` and its cluster bus port `p + 10000` both free: both
/// below the kernel's ephemeral range (32768 on Linux by default), where nothing else takes them
/// between this check and the node's bind (`tests/common/ports.rs` hands out 10000-19999).
fn free_cluster_port() -> u16 {
    loop {
        let p = 20_000 + (rand_u16() % 2_700);
        let both = TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok();
        if both {
            return p;
        }
    }
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ std::process::id().rotate_left(7)) as u16
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until it reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        Self::start_with(None, 0)
    }

    /// Six nodes: three masters and one replica of each (`--cluster-replicas 1`), so that the
    /// cluster fails over when a master dies.
    pub fn start_with_replicas() -> RedisCluster {
        Self::start_with(None, 1)
    }

    /// The same over TLS only (clients, the cluster bus and replication) with `tls`'s
    /// certificate and ACL user.
    pub fn start_tls(tls: &Arc<RedisTls>) -> RedisCluster {
        Self::start_with(Some(tls.clone()), 0)
    }

    fn start_with(tls: Option<Arc<RedisTls>>, replicas: usize) -> RedisCluster {
        require_binary("redis-server", "redis-server");
        require_binary("redis-cli", "redis-tools");
        let mut nodes = Vec::new();
        while nodes.len() < 3 * (1 + replicas) {
            let mut extra: Vec<String> = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-node-timeout".into(),
                "2000".into(),
            ];
            if tls.is_some() {
                extra.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(Into::into));
            }
            let mut node = RedisServer {
                port: free_cluster_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                extra,
                tls: tls.clone(),
                env: Vec::new(),
            };
            if node.spawn() {
                nodes.push(node);
            }
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("redis-cli");
        if let Some(tls) = &tls {
            create
                .arg("--tls")
                .arg("--cacert")
                .arg(tls.ca_file())
                .args(["--user", RedisTls::USER])
                // The password goes by the environment, not the command line.
                .env("REDISCLI_AUTH", tls.password());
        }
        let output = create
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.connection())
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster not ok: {info}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // A replica fails over only once it has synced with its master.
        for node in nodes.iter().filter(|_| replicas > 0) {
            loop {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut node.connection())
                    .unwrap_or_default();
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "replica not in sync: {info}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes }
    }

    /// A connection to the first seed node (TLS and the ACL user for a TLS cluster).
    pub fn first_node_connection(&self) -> redis::Connection {
        self.nodes[0].connection()
    }

    /// How many nodes were started (killed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `127.0.0.1:<port>` of node `i`.
    pub fn address(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].port)
    }

    /// Whether node `i` still runs (not killed by [`RedisCluster::kill`]).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// A connection to node `i`, or `None` when it is down.
    pub fn node_connection(&self, i: usize) -> Option<redis::Connection> {
        if !self.is_running(i) {
            return None;
        }
        self.nodes[i]
            .client()
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .ok()
    }

    /// Kills node `i` (SIGKILL, as a crash would) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Stops node `i` with SIGSTOP: its connections stay open and its kernel still takes what
    /// is sent, but nothing is answered (a node hung, or cut off without a reset), until
    /// [`RedisCluster::thaw`].
    pub fn freeze(&self, i: usize) {
        self.nodes[i].signal("STOP");
    }

    /// Lets a node stopped by [`RedisCluster::freeze`] run again.
    pub fn thaw(&self, i: usize) {
        self.nodes[i].signal("CONT");
    }

    /// A cluster connection that follows MOVED (TLS and the ACL user for a TLS cluster), for
    /// reading a key wherever its slot lives.
    pub fn cluster_connection(&self) -> redis::cluster::ClusterConnection {
        let urls: Vec<String> = self.nodes.iter().map(RedisServer::url).collect();
        let mut builder =
            redis::cluster::ClusterClient::builder(urls).connection_timeout(Duration::from_secs(2));
        if let Some(tls) = &self.nodes[0].tls {
            builder = builder
                .username(RedisTls::USER)
                .password(tls.password())
                .certs(tls.certificates());
        }
        builder
            .build()
            .and_then(|c| c.get_connection())
            .expect("connect to the test cluster")
    }

    /// The seed node URLs, comma-separated (the `redis.url` of a cluster).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A UTF-8 locale whose collation is not byte order (`en_US.UTF-8`), and the `LOCPATH` to run
/// a process in it with: none when the system has it (`locale -a`), otherwise a directory under
/// the cargo target dir where `localedef` compiled it, once, from the Debian package `locales`'
/// sources (no system change, no root needed).
pub fn collating_locale() -> (String, Option<PathBuf>) {
    static LOCALE: OnceLock<(String, Option<PathBuf>)> = OnceLock::new();
    LOCALE
        .get_or_init(|| {
            let name = "en_US.UTF-8".to_owned();
            let installed = Command::new("locale")
                .arg("-a")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if installed
                .lines()
                .any(|l| l.eq_ignore_ascii_case("en_US.utf8") || l == "en_US.UTF-8")
            {
                return (name, None);
            }
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("locales");
            let target = dir.join(&name);
            if !target.join("LC_COLLATE").exists() {
                // Compiled aside and renamed: other test processes may do the same at once.
                let staging = dir.join(format!("staging-{}", std::process::id()));
                std::fs::create_dir_all(&staging).expect("create the locale dir");
                let out = Command::new("localedef")
                    .args(["-i", "en_US", "-f", "UTF-8"])
                    .arg(staging.join(&name))
                    .output();
                let compiled = staging.join(&name).join("LC_COLLATE").exists();
                if !compiled {
                    panic!(
                        "no en_US.UTF-8 locale, and localedef could not compile one ({out:?}); \
                         install the Debian package `locales` (scripts/debian-deps locales, \
                         which scripts/test runs)"
                    );
                }
                if std::fs::rename(staging.join(&name), &target).is_err() {
                    assert!(target.join("LC_COLLATE").exists(), "locale not in place");
                }
                let _ = std::fs::remove_dir_all(&staging);
            }
            (name, Some(dir))
        })
        .clone()
}

/// Fails with the Debian package to install when a binary the tests need is missing.
pub fn require_binary(binary: &str, debian_package: &str) {
    if let Err(e) = Command::new(binary).arg("--version").output() {
        panic!(
            "`{binary}` is needed by the integration tests but cannot be run ({e}); \
             install the Debian package `{debian_package}` (apt-get install -y {debian_package}), \
             or run scripts/test, which installs it"
        );
    }
}

/// Settings for a test service: loopback port 0, fast health probes, plus `extra` `C2P_*` pairs.
pub fn settings(extra: &[(&str, &str)]) -> Settings {
    let mut env: Vec<(String, String)> = vec![
        ("C2P_GRPC__LISTEN".into(), "127.0.0.1:0".into()),
        ("C2P_METRICS__LISTEN".into(), "127.0.0.1:0".into()),
        ("C2P_HEALTH__CHECK_INTERVAL".into(), "100ms".into()),
        // Generous for a loaded 2-core CI machine, where a Redis reply or a probe may wait a few
        // hundred ms for a core: a timeout here fails a call that a test expects to succeed. A
        // Redis that is down refuses at once and does not wait for them.
        ("C2P_HEALTH__CHECK_TIMEOUT".into(), "1s".into()),
        ("C2P_REDIS__CONNECT_TIMEOUT".into(), "2s".into()),
        ("C2P_REDIS__RESPONSE_TIMEOUT".into(), "2s".into()),
        ("C2P_SHUTDOWN__GRACE_PERIOD".into(), "3s".into()),
        // One key for every instance, so that replicas agree on idempotency fingerprints.
        (
            "C2P_ENROLL__FINGERPRINT_KEY_FILE".into(),
            fixture("keys/fingerprint.key").display().to_string(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::load(None, env).expect("test settings are valid")
}

/// A file under `tests/fixtures`.
pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// Generating RSA keys is slow in debug builds: one set of simulator keys per test binary.
pub fn shared_keys() -> SandboxKeys {
    static KEYS: OnceLock<SandboxKeys> = OnceLock::new();
    KEYS.get_or_init(|| SandboxKeys::generate().expect("generate simulator keys"))
        .clone()
}

/// A simulator on a free loopback port, with the shared keys and the sample CMS.
pub async fn start_sandbox() -> Arc<Sandbox> {
    let config = SandboxConfig::new("127.0.0.1:0".parse().expect("addr"), shared_keys())
        .expect("sandbox config");
    Arc::new(Sandbox::start(config).await.expect("simulator starts"))
}

/// The service running in this test process, talking to a simulator.
pub struct TestService {
    pub running: RunningServer,
    pub channel: Channel,
    pub sandbox: Arc<Sandbox>,
}

impl TestService {
    /// Starts the service with `settings` and its own simulator, whose notifications go to it.
    pub async fn start(settings: &Settings) -> TestService {
        let sandbox = start_sandbox().await;
        let service = Self::start_with(settings, sandbox.clone()).await;
        service.notify_me();
        service
    }

    /// Starts the service against a given simulator (several instances can share one).
    pub async fn start_with(settings: &Settings, sandbox: Arc<Sandbox>) -> TestService {
        let upstream = sandbox
            .upstream(&settings.mastercard)
            .expect("clients for the simulator");
        let running = server::start(settings, Arc::new(upstream))
            .await
            .expect("service starts");
        let channel = connect(running.local_addr()).await;
        TestService {
            running,
            channel,
            sandbox,
        }
    }

    /// Points the simulator's notifications at this instance.
    pub fn notify_me(&self) {
        self.sandbox
            .set_notification_target(&format!("http://{}", self.running.local_addr()))
            .expect("notification target");
    }

    pub fn client(&self) -> EnrollmentServiceClient<Channel> {
        EnrollmentServiceClient::new(self.channel.clone())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }
}

/// A lazily connecting channel to `addr`.
pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect to the service")
}

/// A channel to `addr` that connects on first use (for addresses that may refuse).
pub fn connect_lazy(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// The health status of `service` ("" for the whole server).
pub async fn health_status(client: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check answers");
    response.into_inner().status()
}

/// Polls until `service` reports `want`; panics after `within`.
pub async fn wait_for_health(
    client: &mut HealthClient<Channel>,
    service: &str,
    want: ServingStatus,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let status = health_status(client, service).await;
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health of {service:?} is still {status:?}, not {want:?}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `c2p-enroll` binary as a child process, with a clean environment plus `env`.
pub struct ServiceProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ServiceProcess {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> ServiceProcess {
        let mut child = Command::new(binary())
            .args(args)
            .env_clear()
            // Parallel tests must not share the default metrics port.
            .env("C2P_METRICS__LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn c2p-enroll");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        ServiceProcess {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a stderr line contains `needle`, and returns that line.
    pub async fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let log = self.stderr();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("c2p-enroll exited with {status} before logging {needle:?}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("c2p-enroll did not log {needle:?}:\n{}", self.stderr());
    }

    /// Waits for the "gRPC listening" log line and returns the address it names.
    pub async fn listening_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let log = self.stderr();
            if let Some(addr) = log
                .lines()
                .filter(|l| l.contains("gRPC listening"))
                .find_map(listening_addr_of)
            {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("c2p-enroll exited with {status} before listening:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("c2p-enroll did not log its address:\n{}", self.stderr());
    }

    /// Sends a signal by name (TERM, INT) with the `kill` utility.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Read stderr to its end so that callers see the last lines.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "c2p-enroll still running after {within:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `addr` of a "gRPC listening" log line, text (`addr=...`) or JSON (`"addr":"..."`).
fn listening_addr_of(line: &str) -> Option<SocketAddr> {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return json["addr"].as_str()?.parse().ok();
    }
    line.split("addr=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_c2p-enroll"))
}

/// The `KEY=value` lines of an env file (the simulator's `service.env`).
pub fn read_env(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .expect("read the env file")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A Mastercard `POST /cards` body for the test consumer Jane Doe, with the program's ids and
/// Mastercard's default compliance documents.
pub fn mastercard_enroll_request(
    src_client_id: &str,
    service_id: &str,
    src_correlation_id: &str,
    encrypted_card: c2p_enroll::mastercard::processing::types::EncryptedCard,
) -> c2p_enroll::mastercard::enroll::types::EnrollCardRequest {
    use c2p_enroll::mastercard::enroll::types::{
        ComplianceResource, ComplianceSettings, Consumer, ConsumerIdentity, EnrollCardRequest,
    };
    EnrollCardRequest {
        src_client_id: src_client_id.into(),
        service_id: service_id.into(),
        src_correlation_id: src_correlation_id.into(),
        encrypted_card,
        card_source: "ISSUER",
        consumer: Consumer {
            consumer_identity: ConsumerIdentity {
                identity_type: "EMAIL_ADDRESS".into(),
                identity_value: "jane@example.com".into(),
            },
            mobile_number: None,
            country_code: "US".into(),
            language_code: "en_US".into(),
            first_name: Some("Jane".into()),
            last_name: Some("Doe".into()),
        },
        compliance_settings: ComplianceSettings {
            privacy: ComplianceResource {
                latest_version_uri: c2p_enroll::config::DEFAULT_PRIVACY_URI.into(),
            },
            tnc: ComplianceResource {
                latest_version_uri: c2p_enroll::config::DEFAULT_TERMS_URI.into(),
            },
        },
        directory_id: None,
        external_consumer_id: None,
        external_credential_id: None,
    }
}

/// An hour ago, in seconds since the epoch: event times of test notifications, inside the
/// window NotificationIngest accepts (`notifications.max_future_skew`, `max_age`).
pub fn t0() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() - 3600
}
