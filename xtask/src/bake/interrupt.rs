//! Ctrl-C during a bake: forwarded to every Packer (each runs in its own process group, so
//! it hears it exactly once, from us), which then cleans up its temporary key pair, security
//! group and instance before exiting. We wait for that instead of dying first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

#[derive(Debug, Default)]
pub struct Interrupt {
    triggered: AtomicBool,
    groups: Mutex<Vec<i32>>,
}

impl Interrupt {
    /// Listens for SIGINT and SIGTERM on `runtime` for as long as it lives.
    pub fn install(runtime: &tokio::runtime::Runtime) -> anyhow::Result<Arc<Interrupt>> {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = Arc::new(Interrupt::default());
        let _guard = runtime.enter();
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let listener = Arc::clone(&interrupt);
        runtime.spawn(async move {
            loop {
                tokio::select! {
                    _ = sigint.recv() => {},
                    _ = sigterm.recv() => {},
                }
                listener.trigger();
            }
        });
        Ok(interrupt)
    }

    pub fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::SeqCst)
    }

    /// Records a new Packer's process group; interrupts it at once if we already were.
    pub fn register(&self, group: u32) {
        let Ok(group) = i32::try_from(group) else {
            return;
        };
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        groups.push(group);
        if self.is_triggered() {
            let _ = killpg(Pid::from_raw(group), Signal::SIGINT);
        }
    }

    pub fn unregister(&self, group: u32) {
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        groups.retain(|g| i64::from(*g) != i64::from(group));
    }

    fn trigger(&self) {
        let first = !self.triggered.swap(true, Ordering::SeqCst);
        if first {
            eprintln!("interrupt: asking every Packer build to clean up and stop (this can take a minute)...");
        }
        let groups = self
            .groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for group in groups.iter() {
            // Packer's outer (panicwrap) process ignores SIGINT and its builder process
            // handles it: signalling the whole group reaches the one that cleans up.
            let _ = killpg(Pid::from_raw(*group), Signal::SIGINT);
        }
    }
}
