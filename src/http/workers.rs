//! Worker threads that serve connections, each with its own single-threaded runtime (`server.workers` of them).
//!
//! One multi-threaded runtime shares a single epoll instance between its workers: one worker takes every readiness
//! event and the others steal the woken tasks, so connection state moves between cores, and a worker with nothing
//! to steal sleeps until it is woken. Like nginx's worker processes, a worker owns its connections from accept to close: their sockets
//! are registered with the worker's own reactor, their tasks never move, and a worker never waits for another.
//!
//! The accept loop stays on the caller's runtime and hands each new socket to the worker serving the fewest
//! connections. Everything the workers share (`App`, metrics, the connection slots) is `Sync` already.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::http::conn::Connections;

/// The running workers. Dropping them stops every worker, cutting the connections it still serves.
pub(crate) struct Workers {
    workers: Vec<Worker>,
    /// Where the search for the least busy worker starts, so ties rotate.
    next: AtomicUsize,
}

struct Worker {
    handle: Handle,
    /// Connections this worker is serving.
    load: Arc<AtomicUsize>,
    /// Dropping it ends the worker's runtime.
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// Counts a connection against its worker until the connection's task ends.
struct Serving(Arc<AtomicUsize>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` workers (at least one), reporting their connection counts in `gauges`.
    pub(crate) fn start(n: usize, gauges: &Connections) -> std::io::Result<Self> {
        let workers: Vec<Worker> = (0..n.max(1)).map(Worker::start).collect::<std::io::Result<_>>()?;
        gauges.set_workers(workers.iter().map(|l| Arc::clone(&l.load)).collect());
        Ok(Workers { workers, next: AtomicUsize::new(0) })
    }

    /// Runs `connection` on the worker serving the fewest connections. It is first polled there, so a socket it
    /// registers on its first poll (`TcpStream::from_std`) belongs to that worker's reactor.
    pub(crate) fn serve(&self, connection: impl Future<Output = ()> + Send + 'static) {
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let worker = (0..n)
            .map(|i| &self.workers[(start + i) % n])
            .min_by_key(|l| l.load.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.load.fetch_add(1, Ordering::Relaxed);
        let serving = Serving(Arc::clone(&worker.load));
        worker.handle.spawn(async move {
            let _serving = serving;
            connection.await;
        });
    }

    /// Stops every worker and waits for their threads to end.
    pub(crate) async fn stop(self) {
        let threads: Vec<_> = self
            .workers
            .into_iter()
            .map(|l| {
                drop(l.stop);
                l.thread
            })
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// The name every serving thread's name starts with.
const WORKER_THREAD: &str = "condagate-worker-";

/// Whether the calling thread is one that serves connections: work that takes more than a moment (reading, indexing
/// or rendering a big document) asserts it is not, in debug builds, so that moving it onto one fails the tests.
pub(crate) fn on_a_serving_thread() -> bool {
    std::thread::current().name().is_some_and(|n| n.starts_with(WORKER_THREAD))
}

impl Worker {
    fn start(i: usize) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = rt.handle().clone();
        let thread = std::thread::Builder::new().name(format!("{WORKER_THREAD}{i}")).spawn(move || {
            let _ = rt.block_on(stopped);
            // Connection tasks still here are dropped; a file read on the blocking pool is not waited for.
            rt.shutdown_background();
        })?;
        Ok(Worker { handle, load: Arc::new(AtomicUsize::new(0)), stop, thread })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn serving_threads_know_themselves_and_their_blocking_pool_does_not() {
        let gauges = Connections::default();
        let workers = Workers::start(1, &gauges).unwrap();
        let handle = workers.workers[0].handle.clone();
        let (on_worker, on_pool) = handle
            .spawn(async { (on_a_serving_thread(), tokio::task::spawn_blocking(on_a_serving_thread).await.unwrap()) })
            .await
            .unwrap();
        assert!(on_worker && !on_pool, "worker: {on_worker}, its blocking pool: {on_pool}");
        assert!(!on_a_serving_thread(), "the test's own thread");
        workers.stop().await;
    }

    fn loads(workers: &Workers) -> Vec<usize> {
        workers.workers.iter().map(|l| l.load.load(Ordering::Relaxed)).collect()
    }

    /// Serves a connection that lasts until the returned sender is dropped.
    fn hold(workers: &Workers) -> oneshot::Sender<()> {
        let (tx, rx) = oneshot::channel::<()>();
        workers.serve(async move {
            let _ = rx.await;
        });
        tx
    }

    #[tokio::test]
    async fn each_connection_goes_to_the_least_busy_worker_and_stopping_cuts_what_is_left() {
        let gauges = Connections::default();
        let workers = Workers::start(3, &gauges).unwrap();
        let mut held: Vec<_> = (0..3).map(|_| Some(hold(&workers))).collect();
        assert_eq!(loads(&workers), [1, 1, 1]);
        // The connections of workers 1 and 2 end: both new ones go there, not round the clock to worker 0.
        held[1] = None;
        held[2] = None;
        let started = Instant::now();
        while loads(&workers) != [1, 0, 0] {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "ended connections still counted: {:?}",
                loads(&workers)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        held.push(Some(hold(&workers)));
        held.push(Some(hold(&workers)));
        assert_eq!(loads(&workers), [1, 1, 1]);
        workers.stop().await;
        let cut = held.iter().flatten().filter(|tx| tx.is_closed()).count();
        assert_eq!(cut, 3, "a stopped worker must drop the connections it still serves");
    }
}
