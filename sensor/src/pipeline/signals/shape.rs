//! What a process is: where it runs from, whether it poses as a kernel thread, whether its
//! arguments read like a miner's.
use minerwatch_detect::{Finding, indicators};

use super::{Found, Signal};
use crate::{config::Config, pipeline::process::Tracked};

struct Shape;

pub fn new(_: &Config) -> Box<dyn Signal> {
    Box::new(Shape)
}

impl Signal for Shape {
    fn name(&self) -> &'static str {
        "shape"
    }

    fn on_process(&mut self, t: &mut Tracked, out: &mut Vec<Found>) {
        let p = &t.info;
        let mut push = |finding| {
            out.push(Found {
                tgid: p.pid,
                finding,
                peer: None,
            })
        };
        if let Some(why) = indicators::exe_location(&p.exe) {
            push(Finding::ExeLocation {
                exe: p.exe.clone(),
                why,
            });
        }
        if let Some(name) =
            indicators::imitates_kernel_thread(&p.comm, p.argv.first().map(String::as_str), &p.exe)
        {
            push(Finding::FakeKernelThread {
                comm: name,
                exe: p.exe.clone(),
            });
        }
        let ind = indicators::miner_cmdline(&p.argv);
        if !ind.is_empty() {
            push(Finding::MinerCmdline { indicators: ind });
        }
    }
}
