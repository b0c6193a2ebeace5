//! Progress for people: bars on a terminal, plain log lines otherwise (pods, CI).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Where progress goes. `Ui::detect()` picks bars when stderr is a terminal.
#[derive(Clone)]
pub struct Ui {
    bars: Option<MultiProgress>,
    quiet: bool,
}

impl Ui {
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            Self {
                bars: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
                quiet: false,
            }
        } else {
            Self::plain()
        }
    }

    /// Log lines only.
    pub fn plain() -> Self {
        Self {
            bars: None,
            quiet: false,
        }
    }

    /// Nothing at all (inner steps of a search, which reports them as one line each).
    pub fn quiet() -> Self {
        Self {
            bars: None,
            quiet: true,
        }
    }

    /// For inner steps: their progress bars on a terminal, none of their log lines.
    pub fn inner(&self) -> Self {
        Self {
            bars: self.bars.clone(),
            quiet: true,
        }
    }

    /// Something the run got past but people should know (printed even by an inner `Ui`).
    pub fn warn(&self, msg: &str) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(format!("warning: {msg}"));
            }
            None => tracing::warn!("{msg}"),
        }
    }

    pub fn stage(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(m) => {
                let _ = m.println(format!("» {msg}"));
            }
            None => tracing::info!("{msg}"),
        }
    }

    /// A bar for a transfer (`bytes`) or a count (samples).
    pub fn bar(&self, label: &str, bytes: bool) -> Bar {
        let pb = match &self.bars {
            Some(m) => {
                let style = if bytes {
                    "{spinner} {msg:<28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
                } else {
                    "{spinner} {msg:<28} [{bar:30}] {pos}/{len} {per_sec}"
                };
                let pb = m.add(ProgressBar::new(0));
                pb.set_style(
                    ProgressStyle::with_template(style)
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                pb.set_message(label.to_string());
                Some(pb)
            }
            None => None,
        };
        Bar {
            pb,
            label: label.to_string(),
            bytes,
            quiet: self.quiet,
        }
    }
}

pub struct Bar {
    pb: Option<ProgressBar>,
    label: String,
    bytes: bool,
    quiet: bool,
}

impl Bar {
    pub fn set(&self, pos: u64, total: Option<u64>) {
        if let Some(pb) = &self.pb {
            if let Some(t) = total {
                pb.set_length(t);
            }
            pb.set_position(pos);
        }
    }

    pub fn finish(&self, pos: u64) {
        match &self.pb {
            Some(pb) => pb.finish_and_clear(),
            None if self.quiet => {}
            None if self.bytes => tracing::info!("{}: {} bytes", self.label, pos),
            None => tracing::info!("{}: {} done", self.label, pos),
        }
    }
}
