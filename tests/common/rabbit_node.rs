//! A RabbitMQ node of a test's own, on a free port, so that a test can restart "the broker"
//! without disturbing the tests that share the machine's broker. It runs the installed
//! `rabbitmq-server` (as the `rabbitmq` user, like the system node) with its own node name, ports,
//! data and log directories, and is stopped and removed on drop.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct RabbitNode {
    pub port: u16,
    pub node: String,
    dir: PathBuf,
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
        let dir = std::env::temp_dir().join(format!("vizhub-rabbit-{port}"));
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
        // rabbitmq-server drops to the rabbitmq user: it must own its directories.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let n = RabbitNode { port, node, dir };
        let status = n
            .command("rabbitmq-server")
            .arg("-detached")
            .status()
            .expect("rabbitmq-server is installed");
        assert!(status.success(), "rabbitmq-server -detached failed");
        n.wait_until(true, Duration::from_secs(90));
        n
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let d = |p: &str| self.dir.join(p);
        c.env("RABBITMQ_CONF_ENV_FILE", d("env"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", (self.port + 20000).to_string())
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq"))
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("plugins"))
            .env("RABBITMQ_PID_FILE", d("pid"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d("feature_flags"))
            .stdout(std::process::Stdio::null())
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
