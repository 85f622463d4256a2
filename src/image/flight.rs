//! Single-flight: concurrent requests for the same key share one run of the work. The work
//! runs in its own task and is aborted when the last waiter goes away (a cancelled RPC), so
//! an abandoned pull stops instead of finishing behind the client's back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;
use tokio::task::AbortHandle;

struct Flight<T> {
    rx: watch::Receiver<Option<T>>,
    abort: AbortHandle,
}

impl<T> Drop for Flight<T> {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

pub struct Flights<T> {
    map: Mutex<HashMap<String, Weak<Flight<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    /// Joins the flight for `key`, or starts `make()` as a new one. `None` means the work
    /// was aborted or panicked before it produced a value.
    pub async fn run<F>(&self, key: &str, make: impl FnOnce() -> F) -> Option<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let flight = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(key).and_then(Weak::upgrade) {
                Some(f) => f,
                None => {
                    map.retain(|_, w| w.strong_count() > 0);
                    let (tx, rx) = watch::channel(None);
                    let fut = make();
                    let task = tokio::spawn(async move {
                        let v = fut.await;
                        let _ = tx.send(Some(v));
                    });
                    let f = Arc::new(Flight {
                        rx,
                        abort: task.abort_handle(),
                    });
                    map.insert(key.to_string(), Arc::downgrade(&f));
                    f
                }
            }
        };
        let mut rx = flight.rx.clone();
        let out = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        drop(rx);
        {
            // The finished flight must not serve later callers: they start afresh.
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            if map
                .get(key)
                .is_some_and(|w| w.as_ptr() == Arc::as_ptr(&flight))
            {
                map.remove(key);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights = Arc::new(Flights::<usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut joins = Vec::new();
        for _ in 0..5 {
            let (f, r) = (flights.clone(), runs.clone());
            joins.push(tokio::spawn(async move {
                f.run("k", || async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    r.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
            }));
        }
        for j in joins {
            assert_eq!(j.await.unwrap(), Some(1));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn last_waiter_leaving_aborts_the_work() {
        let flights = Arc::new(Flights::<()>::default());
        let finished = Arc::new(AtomicUsize::new(0));
        let fin = finished.clone();
        let waiter = tokio::time::timeout(
            Duration::from_millis(20),
            flights.run("k", || async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                fin.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .await;
        assert!(waiter.is_err());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 0);
    }
}
