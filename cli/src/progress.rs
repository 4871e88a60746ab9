//! Progress of the long-running commands (erase, export, sweep): one line per region,
//! a spinner on a terminal, a printed line per change otherwise (logs, CI).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One line per region: a spinner on a terminal, a printed line per change otherwise.
pub struct RegionProgress {
    bars: BTreeMap<String, ProgressBar>,
    last: BTreeMap<String, String>,
    terminal: bool,
    _multi: MultiProgress,
}

impl RegionProgress {
    pub fn new(regions: impl Iterator<Item = String>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template("{spinner} {prefix:>4} {wide_msg}")
            .expect("a valid template");
        let bars = regions
            .map(|region| {
                let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
                bar.set_prefix(region.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                (region, bar)
            })
            .collect();
        Self {
            bars,
            last: BTreeMap::new(),
            terminal,
            _multi: multi,
        }
    }

    pub fn update(&mut self, region: &str, text: String, done: bool) {
        if let Some(bar) = self.bars.get(region) {
            if done {
                bar.finish_with_message(text.clone());
            } else {
                bar.set_message(text.clone());
            }
        }
        if !self.terminal && self.last.get(region) != Some(&text) {
            eprintln!("{region}: {text}");
            self.last.insert(region.to_string(), text);
        }
    }
}
