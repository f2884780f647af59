//! The training progress bar: step, loss, learning rate, tokens/s and ETA.
use indicatif::{ProgressBar, ProgressStyle};
use lowrank_train::{Observer, StepLog};

pub struct Bar {
    bar: Option<ProgressBar>,
    pub losses: Vec<f64>,
}

impl Bar {
    pub fn new() -> Self {
        Self { bar: None, losses: vec![] }
    }
}

impl Observer for Bar {
    fn start(&mut self, total: usize, start: usize) {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(start as u64);
        bar.reset_eta();
        self.bar = Some(bar);
    }

    fn step(&mut self, log: &StepLog) {
        self.losses.push(log.loss);
        if let Some(b) = &self.bar {
            let val = log.val_loss.map(|v| format!(" val {v:.4}")).unwrap_or_default();
            b.set_message(format!("loss {:.4}{val} lr {:.2e} {:.0} tok/s", log.loss, log.lr, log.tokens_per_s));
            b.set_position(log.step as u64);
            if !b.is_hidden() {
                return;
            }
        }
        // Not a terminal (CI, pipes): a plain line every 10 steps.
        if log.step % 10 == 0 || log.step == log.total_steps {
            let val = log.val_loss.map(|v| format!(" val_loss {v:.4}")).unwrap_or_default();
            eprintln!("step {}/{} loss {:.4}{val} lr {:.2e} {:.0} tok/s", log.step, log.total_steps, log.loss, log.lr, log.tokens_per_s);
        }
    }

    fn note(&mut self, msg: &str) {
        // Warnings carry the tool's name, as every other message it prints to the user.
        let msg = if msg.starts_with("warning:") { format!("lowrank: {msg}") } else { msg.to_string() };
        match &self.bar {
            // A hidden bar (not a terminal) would drop the line.
            Some(b) if !b.is_hidden() => b.println(msg),
            _ => eprintln!("{msg}"),
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}
