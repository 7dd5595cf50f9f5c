//! Running a Python program of the tests (stomp.py scenarios, pika tutorials): a
//! client written by others, as its own process, killed past a deadline.
#![allow(dead_code)]

use std::io::Read as _;
use std::process::Command;
use std::time::Duration;

/// Runs `command` (stdout and stderr piped), killing it past `deadline`:
/// (success, stdout, stderr).
pub async fn run_with_deadline(
    command: Command,
    deadline: Duration,
) -> Result<(bool, String, String), String> {
    tokio::task::spawn_blocking(move || run_blocking(command, deadline))
        .await
        .map_err(|e| e.to_string())?
}

fn run_blocking(
    mut command: Command,
    deadline: Duration,
) -> Result<(bool, String, String), String> {
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        let _ = tx.send(err);
    });
    let (out_tx, out_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = out_tx.send(out);
    });
    let out = match out_rx.recv_timeout(deadline) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = child.wait();
            return Err(format!("did not finish within {deadline:?}"));
        }
    };
    let err = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    let status = child.wait().map_err(|e| e.to_string())?;
    Ok((status.success(), out, err))
}
