//! The gateway binary as a child process: for what only a process shows (signals, exit codes,
//! what it writes to stderr), and for several gateways on one database.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

/// A running `livegate` process, configured through the environment, its stderr collected.
pub struct GatewayProcess {
    child: tokio::process::Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts `livegate` on `port` against `database_url`, watching `messages`, and waits until
    /// it accepts connections.
    pub async fn start(database_url: &str, port: u16) -> GatewayProcess {
        GatewayProcess::start_with(database_url, port, &[]).await
    }

    /// As [`GatewayProcess::start`], with more `LIVEGATE_…` variables (later ones win).
    pub async fn start_with(database_url: &str, port: u16, env: &[(&str, &str)]) -> GatewayProcess {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_livegate"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("LIVEGATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("LIVEGATE_SERVER__WORKERS", "1")
            .env("LIVEGATE_FEED__TABLES", "[\"messages\"]")
            .env("LIVEGATE_FEED__POLL_INTERVAL_MS", "200")
            .env("LIVEGATE_CONFIG", "/dev/null");
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the gateway binary");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let pipe = child.stderr.take().expect("stderr is piped");
        tokio::spawn(async move {
            let mut reader = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        let gateway = GatewayProcess { child, stderr };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return gateway;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway did not start listening on {port}: {:?}", gateway.stderr());
    }

    /// Everything it wrote to stderr so far, one entry per line.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The JSON log lines so far (with `[log] format = "json"`); panics on a line that is not.
    pub fn json_lines(&self) -> Vec<Value> {
        let lines = self.stderr();
        lines
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}")))
            .collect()
    }

    /// Sends `signal` (SIGTERM, SIGINT).
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("the gateway is running") as i32;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal the gateway");
    }

    /// Waits for the process to exit, at most `within`: its exit code.
    pub async fn exited_within(&mut self, within: Duration) -> Option<i32> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => None,
        }
    }

    /// SIGKILL: no goodbye to anyone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill the gateway");
    }
}
