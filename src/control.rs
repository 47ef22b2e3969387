//! The supervisor's orders to one feed loop, and the loop's interruptible wait.
//!
//! A feed loop waits on its `FeedControl` instead of sleeping, so an order (stop, retire)
//! wakes it at once; it reads the order between steps, never during one.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Run,
    /// Deliver what is queued until `deadline`, account for the rest, end.
    Stop {
        deadline: Instant,
    },
    /// End after the step under way, handing what is queued to the feed's next loop (a
    /// reload that changed this feed's settings).
    Retire,
}

#[derive(Clone)]
pub struct FeedControl(Arc<(Mutex<Order>, Condvar)>);

impl Default for FeedControl {
    fn default() -> Self {
        FeedControl(Arc::new((Mutex::new(Order::Run), Condvar::new())))
    }
}

impl FeedControl {
    pub fn order(&self) -> Order {
        *self.lock()
    }

    /// Gives an order and wakes the loop. A stop never turns back into a run.
    pub fn give(&self, order: Order) {
        let mut current = self.lock();
        if *current == Order::Run || order != Order::Run {
            *current = order;
        }
        self.0 .1.notify_all();
    }

    /// Waits until `until` or until an order other than `Run` arrives; returns the order.
    pub fn wait_until(&self, until: Instant) -> Order {
        let mut current = self.lock();
        loop {
            let now = Instant::now();
            if *current != Order::Run || now >= until {
                return *current;
            }
            current = match self.0 .1.wait_timeout(current, until - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    fn lock(&self) -> MutexGuard<'_, Order> {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_order_wakes_a_waiting_loop_at_once() {
        let control = FeedControl::default();
        let waiter = control.clone();
        let t0 = Instant::now();
        let handle = std::thread::spawn(move || waiter.wait_until(t0 + Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        let deadline = Instant::now();
        control.give(Order::Stop { deadline });
        assert_eq!(handle.join().unwrap(), Order::Stop { deadline });
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn waiting_without_an_order_times_out() {
        let control = FeedControl::default();
        let until = Instant::now() + Duration::from_millis(30);
        assert_eq!(control.wait_until(until), Order::Run);
        assert!(Instant::now() >= until);
    }

    #[test]
    fn a_stop_is_not_undone() {
        let control = FeedControl::default();
        control.give(Order::Retire);
        control.give(Order::Run);
        assert_eq!(control.order(), Order::Retire);
    }
}
