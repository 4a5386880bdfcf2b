//! A RabbitMQ node of a test's own, on a free port, so that a test can restart "the broker"
//! without disturbing the tests that share the machine's broker. It runs the installed
//! `rabbitmq-server` (as the `rabbitmq` user, like the system node) with its own node name, ports,
//! data and log directories, and is stopped and removed on drop.
//!
//! `RABBIT_NODE_ROOT` names a root directory holding another RabbitMQ (scripts/test's RabbitMQ
//! 4.0 run sets it to the Debian 13 root of `scripts/services start rabbit4`): the node then runs
//! from that root's binaries, in it with `chroot`, so that a test that restarts its broker
//! restarts the version the rest of that run talks to.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct RabbitNode {
    pub port: u16,
    pub node: String,
    /// The node's directory as this process sees it.
    dir: PathBuf,
    /// `RABBIT_NODE_ROOT`, if set; `dir` lies inside it.
    root: Option<PathBuf>,
}

fn free_port() -> u16 {
    // Ports whose distribution port (+ 20000) is also free.
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 40000 && std::net::TcpListener::bind(("127.0.0.1", p + 20000)).is_ok() {
            return p;
        }
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

impl RabbitNode {
    pub fn start() -> RabbitNode {
        let port = free_port();
        let node = format!("vzt{port}@localhost");
        let root = std::env::var_os("RABBIT_NODE_ROOT")
            .filter(|r| !r.is_empty())
            .map(PathBuf::from);
        // Inside the root the node's files must be reachable after `chroot`: its /tmp.
        let dir = match &root {
            Some(r) => r.join(format!("tmp/vizhub-rabbit-{port}")),
            None => std::env::temp_dir().join(format!("vizhub-rabbit-{port}")),
        };
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("env"),
            "ERL_EPMD_ADDRESS=127.0.0.1\nexport ERL_FLAGS=\"-kernel inet_dist_use_interface {127,0,0,1}\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("plugins"), "[].\n").unwrap();
        let n = RabbitNode {
            port,
            node,
            dir,
            root,
        };
        // rabbitmq-server drops to the rabbitmq user: it must own its directories. Inside a
        // root that is the root's own rabbitmq user, whose uid may differ from the host's.
        let _ = n
            .command("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(n.path(""))
            .status();
        let status = n
            .command("rabbitmq-server")
            .arg("-detached")
            .status()
            .expect("rabbitmq-server is installed");
        assert!(status.success(), "rabbitmq-server -detached failed");
        n.wait_until(true, Duration::from_secs(90));
        n
    }

    /// `p` in the node's directory as the node sees it (inside the root, if any).
    fn path(&self, p: &str) -> PathBuf {
        match &self.root {
            Some(r) => Path::new("/")
                .join(
                    self.dir
                        .strip_prefix(r)
                        .expect("the node's dir is in its root"),
                )
                .join(p),
            None => self.dir.join(p),
        }
    }

    fn command(&self, program: &str) -> Command {
        let d = |p: &str| self.path(p).into_os_string();
        let vars: [(&str, OsString); 10] = [
            ("RABBITMQ_CONF_ENV_FILE", d("env")),
            ("RABBITMQ_NODENAME", self.node.clone().into()),
            ("RABBITMQ_NODE_PORT", self.port.to_string().into()),
            ("RABBITMQ_DIST_PORT", (self.port + 20000).to_string().into()),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq")),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("plugins")),
            ("RABBITMQ_PID_FILE", d("pid")),
            ("RABBITMQ_FEATURE_FLAGS_FILE", d("feature_flags")),
        ];
        let mut c = match &self.root {
            Some(root) => {
                // `env -i` inside the root, the variables as its arguments: a clean environment
                // as the root's own scripts expect (`scripts/services` runs its 4.0 node the
                // same way); the host's PATH and RABBITMQ_* must not leak in.
                let mut c = Command::new("chroot");
                c.arg(root).args([
                    "env",
                    "-i",
                    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME=/var/lib/rabbitmq",
                    "LANG=C.UTF-8",
                ]);
                for (k, v) in vars {
                    let mut kv = OsString::from(format!("{k}="));
                    kv.push(v);
                    c.arg(kv);
                }
                c.arg(program);
                c
            }
            None => {
                let mut c = Command::new(program);
                c.envs(vars);
                c
            }
        };
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    }

    fn ctl(&self, args: &[&str]) {
        let ok = self
            .command("rabbitmqctl")
            .args(["-n", &self.node])
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "rabbitmqctl {args:?} failed on {}", self.node);
    }

    fn wait_until(&self, up: bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while listening(self.port) != up {
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {} not {} within {timeout:?}",
                self.node,
                if up { "up" } else { "down" }
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stop the broker (every connection drops), keeping its data.
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
        self.wait_until(false, Duration::from_secs(30));
    }

    pub fn start_app(&self) {
        self.ctl(&["start_app"]);
        self.wait_until(true, Duration::from_secs(60));
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = self
            .command("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The RabbitMQ version a broker announces (`version` in its Connection.Start server
/// properties), e.g. "4.0.5". lapin does not expose the server properties, so this speaks the
/// first step of the handshake itself: the protocol header, then the first frame.
pub fn broker_version(amqp_uri: &str) -> String {
    use std::io::{Read, Write};
    // amqp://user:pass@host:port/vhost → host:port
    let rest = amqp_uri.split_once("://").map_or(amqp_uri, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let addr = rest.split('/').next().unwrap_or(rest);
    let addr = if addr.contains(':') {
        addr.to_string()
    } else {
        format!("{addr}:5672")
    };
    let mut s = std::net::TcpStream::connect(&addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    // Frame header: type (1 = method), channel, payload size; then the payload and 0xCE.
    let mut head = [0u8; 7];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 1, "{addr} answered with a method frame");
    let size = u32::from_be_bytes(head[3..7].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; size];
    s.read_exact(&mut payload).unwrap();
    // The server properties are a field table; `version` is a long string (`S`): find the key
    // rather than parse every value type the table may hold.
    let key = b"\x07versionS";
    let at = payload
        .windows(key.len())
        .position(|w| w == key)
        .unwrap_or_else(|| panic!("{addr} announces no version"))
        + key.len();
    let len = u32::from_be_bytes(payload[at..at + 4].try_into().unwrap()) as usize;
    String::from_utf8_lossy(&payload[at + 4..at + 4 + len]).into_owned()
}
