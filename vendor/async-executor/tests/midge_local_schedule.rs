//! midge's change: a task woken on a runner's thread goes to that runner's
//! local queue. These check that nothing is lost or stuck because of it.

use async_executor::Executor;
use futures_lite::future;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

/// Runs `f` on a thread and waits at most 10 s for its result.
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(10)).expect("finished within 10 s")
}

/// A runner whose future moved to another thread and was dropped there must
/// not keep catching tasks scheduled on the thread it first ran on.
#[test]
fn runner_dropped_on_another_thread_loses_no_task() {
    let ex: &'static Executor<'static> = Box::leak(Box::new(Executor::new()));
    let mut run = Box::pin(ex.run(future::pending::<()>()));
    assert!(future::block_on(future::poll_once(&mut run)).is_none());
    thread::spawn(move || drop(run)).join().unwrap();

    let task = ex.spawn(async { 7 });
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let runner = thread::spawn(move || future::block_on(ex.run(stopped.recv())));
    assert_eq!(bounded(|| future::block_on(task)), 7);
    drop(stop);
    runner.join().unwrap().unwrap_err();
}

/// Tasks that wake each other from inside the runner (so always onto its
/// local queue) all finish, with two runners stealing from each other.
#[test]
fn ping_pong_between_local_tasks_finishes() {
    let ex = Arc::new(Executor::new());
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let (ex, stopped) = (ex.clone(), stopped.clone());
            thread::spawn(move || future::block_on(ex.run(stopped.recv())))
        })
        .collect();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (a_tx, a_rx) = async_channel::bounded::<u32>(1);
            let (b_tx, b_rx) = async_channel::bounded::<u32>(1);
            let ping = ex.spawn(async move {
                for i in 0..1000 {
                    a_tx.send(i).await.unwrap();
                    assert_eq!(b_rx.recv().await.unwrap(), i);
                }
            });
            let pong = ex.spawn(async move {
                while let Ok(i) = a_rx.recv().await {
                    b_tx.send(i).await.unwrap();
                }
            });
            (ping, pong)
        })
        .collect();
    bounded(|| {
        for (ping, pong) in tasks {
            future::block_on(ping);
            future::block_on(pong);
        }
    });
    drop(stop);
    for r in runners {
        r.join().unwrap().unwrap_err();
    }
}
