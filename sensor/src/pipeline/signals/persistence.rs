//! Persistence and tampering: a process that writes a cron job, a systemd unit,
//! `/etc/ld.so.preload`, `authorized_keys`, a system binary, the accounts or sudoers, as the
//! persistence watch (`crate::files`) reports it with the writer's pid. The package manager's
//! writes there, and those of the scripts it runs, are its job and weigh little.
use std::collections::BTreeMap;

use minerwatch_detect::{Finding, persistence};

use super::{Found, Signal};
use crate::{
    config::Config,
    kernel::Event,
    pipeline::process::{Table, Tracked},
};

#[derive(Default)]
struct Persistence {
    /// Changes judged, and those by the package manager.
    changes: u64,
    by_package_manager: u64,
}

pub fn new(_: &Config) -> Box<dyn Signal> {
    Box::<Persistence>::default()
}

impl Signal for Persistence {
    fn name(&self) -> &'static str {
        "persistence"
    }

    fn on_event(&mut self, ev: &Event, t: &mut Tracked, out: &mut Vec<Found>) {
        let Event::File(f) = ev else { return };
        let c = &f.change;
        let Some(target) = persistence::classify(&c.dir, &c.name) else {
            return;
        };
        // The package manager itself, or a maintainer script or trigger it started.
        let package_manager =
            t.info.package_manager || persistence::is_package_manager(&t.info.exe, &t.info.argv);
        self.changes += 1;
        if package_manager {
            self.by_package_manager += 1;
        }
        out.push(Found {
            tgid: t.key.tgid,
            finding: Finding::Persistence {
                path: c.path(),
                target,
                change: c.change,
                package_manager,
            },
            peer: None,
        });
    }

    fn counters(&self, _: &Table, out: &mut BTreeMap<&'static str, u64>) {
        out.insert("persistence_changes", self.changes);
        out.insert("persistence_by_package_manager", self.by_package_manager);
    }
}
