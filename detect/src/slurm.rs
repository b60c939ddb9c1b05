//! Slurm's side of a process, from text Slurm and the kernel show: which job a cgroup path is
//! in, and what `squeue` says about a job. A path is a job's only under an *anchor*, the
//! root-owned folder slurmstepd makes its jobs in (v1 `/slurm` or `/slurm_<node>`, v2
//! `…/slurmstepd.scope`): a `job_<N>` folder anywhere else is one a user could have made.
//! Deciding which folders are anchors needs the file system and lives in the sensor.

/// The job a cgroup path names. `id` is `None` for a job known only by its SLUID (Slurm
/// 26.05's folder names), until Slurm confirms it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct JobRef {
    pub id: Option<u64>,
    pub sluid: Option<String>,
}

/// A SLUID as Slurm 26.05 writes it: `s` and 13 characters of Crockford base32 (digits and
/// capitals without I, L, O, U).
pub fn is_sluid(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.len() == 14
        && b[0] == b's'
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_digit() || (c.is_ascii_uppercase() && !b"ILOU".contains(c)))
}

/// The job `path` is in when it lies under `anchor`: v1 `<anchor>/uid_<U>/job_<N>[/…]`, v2
/// `<anchor>/job_<N>[/…]` or `<anchor>/<SLUID>[/…]`. Nothing else under the anchor (its own
/// `system` folder, for one) is a job.
pub fn job_under(path: &str, anchor: &str) -> Option<JobRef> {
    let anchor = anchor.trim_end_matches('/');
    let rest = path.strip_prefix(anchor)?.strip_prefix('/')?;
    let mut segs = rest.split('/');
    let mut seg = segs.next()?;
    if let Some(uid) = seg.strip_prefix("uid_") {
        uid.parse::<u32>().ok()?;
        seg = segs.next()?;
    }
    if let Some(id) = seg.strip_prefix("job_") {
        let id = id.parse().ok()?;
        return Some(JobRef {
            id: Some(id),
            sluid: None,
        });
    }
    is_sluid(seg).then(|| JobRef {
        id: None,
        sluid: Some(seg.to_string()),
    })
}

/// What Slurm says about one job (`squeue` with [`SQUEUE_FORMAT`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct JobInfo {
    pub id: u64,
    pub uid: u32,
    pub user: String,
    pub partition: String,
    /// CPUs allocated to the job (all its nodes).
    pub cpus: u32,
    pub nodes: u32,
    /// GPUs asked per node (`gres/gpu` or `gpu:<type>:<n>`), 0 when none.
    pub gpus: u32,
    /// As Slurm prints it, local time without a zone (`2026-12-04T02:58:13`).
    pub start: String,
    pub state: String,
    pub node_list: String,
    pub account: String,
}

/// Fields separated by the ASCII unit separator, which no Slurm name holds; the account,
/// the one field a user may spell freely when there is no slurmdbd, comes last, so nothing
/// it holds can shift another field.
pub const SQUEUE_FORMAT: &str = "%A\x1f%U\x1f%u\x1f%P\x1f%C\x1f%D\x1f%S\x1f%T\x1f%N\x1f%b\x1f%a";

/// One line of `squeue -h -o SQUEUE_FORMAT`.
pub fn parse_squeue(line: &str) -> Option<JobInfo> {
    let mut f = line.trim_end_matches(['\n', '\r']).splitn(11, '\x1f');
    let mut next = || f.next();
    let id = next()?.trim().parse().ok()?;
    let uid = next()?.trim().parse().ok()?;
    let user = next()?.to_string();
    let partition = next()?.to_string();
    let cpus = next()?.trim().parse().unwrap_or(0);
    let nodes = next()?.trim().parse().unwrap_or(0);
    let start = next()?.to_string();
    let state = next()?.to_string();
    let node_list = next()?.to_string();
    let gpus = gpus_of(next()?);
    let account = next()?.to_string();
    Some(JobInfo {
        id,
        uid,
        user,
        partition,
        cpus,
        nodes,
        gpus,
        start,
        state,
        node_list,
        account,
    })
}

/// GPUs in a TRES-per-node string: `gres/gpu:2`, `gres:gpu:a100:2`, `gpu:1`; `N/A` is none.
fn gpus_of(tres: &str) -> u32 {
    tres.split(',')
        .filter_map(|item| {
            let item = item.trim();
            let item = item
                .strip_prefix("gres/")
                .or_else(|| item.strip_prefix("gres:"))
                .unwrap_or(item);
            let rest = item.strip_prefix("gpu")?;
            if rest.is_empty() {
                return Some(1);
            }
            let rest = rest.strip_prefix([':', '='])?;
            Some(rest.rsplit(':').next()?.parse().unwrap_or(1))
        })
        .fold(0u32, u32::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Option<JobRef> {
        Some(JobRef {
            id: Some(n),
            sluid: None,
        })
    }

    #[test]
    fn jobs_only_under_their_anchor() {
        assert_eq!(
            job_under("/slurm_vm/uid_1001/job_7/step_batch", "/slurm_vm"),
            id(7)
        );
        assert_eq!(job_under("/slurm_vm/uid_1001/job_7", "/slurm_vm/"), id(7));
        assert_eq!(
            job_under(
                "/system.slice/slurmstepd.scope/job_42/step_0/user/task_0",
                "/system.slice/slurmstepd.scope"
            ),
            id(42)
        );
        // A user's folder named like a job, and an anchor's look-alike sibling.
        assert_eq!(
            job_under("/user.slice/u/uid_1/job_9/step_0", "/slurm_vm"),
            None
        );
        assert_eq!(job_under("/slurm_vmx/uid_1/job_9", "/slurm_vm"), None);
        assert_eq!(
            job_under("/slurm_vm/system", "/slurm_vm"),
            None,
            "slurmstepd's own folder is no job"
        );
        assert_eq!(job_under("/slurm_vm/uid_x/job_9", "/slurm_vm"), None);
        assert_eq!(job_under("/slurm_vm/uid_1/job_", "/slurm_vm"), None);
    }

    #[test]
    fn sluid_folders_name_their_job_unconfirmed() {
        assert_eq!(
            job_under(
                "/system.slice/slurmstepd.scope/sEKNKTV3WPV500/step_0/user/task_0",
                "/system.slice/slurmstepd.scope"
            ),
            Some(JobRef {
                id: None,
                sluid: Some("sEKNKTV3WPV500".into())
            })
        );
        assert!(!is_sluid("sEKNKTV3WPV50"), "13 characters");
        assert!(!is_sluid("SEKNKTV3WPV500"), "capital S");
        assert!(!is_sluid("sEKNKTV3WPVI00"), "I is not Crockford");
        assert!(!is_sluid("system.slice00"));
    }

    #[test]
    fn squeue_lines_parse_and_the_account_cannot_shift_fields() {
        let line = "12\x1f1001\x1fmwjob\x1fmwtest\x1f2\x1f1\x1f2026-12-04T02:58:13\x1fRUNNING\x1fvm\x1fgres/gpu:2\x1fphys\x1fics\n";
        let j = parse_squeue(line).unwrap();
        assert_eq!(
            (j.id, j.uid, j.user.as_str(), j.partition.as_str()),
            (12, 1001, "mwjob", "mwtest")
        );
        assert_eq!((j.cpus, j.nodes, j.gpus), (2, 1, 2));
        assert_eq!(j.account, "phys\x1fics");
        assert_eq!(j.state, "RUNNING");
        assert_eq!(parse_squeue("garbage"), None);
        assert_eq!(parse_squeue(""), None);
        assert_eq!(gpus_of("N/A"), 0);
        assert_eq!(gpus_of("gres:gpu:a100:4"), 4);
        assert_eq!(gpus_of("gpu"), 1);
        assert_eq!(gpus_of("gres/shard:3"), 0);
        assert_eq!(
            gpus_of("gpu:4294967295,gpu:4294967295"),
            u32::MAX,
            "no overflow"
        );
    }
}
