//! `kiln img check`: qcow2 refcount verification with qemu-img's report and exit statuses
//! (0 clean, 2 corruptions, 3 leaked clusters only), and `-r leaks|all` repairs (the exit
//! status then describes the image after the repair, as qemu-img's does).

use super::parse_format;
use kiln_block::qcow2::check::CheckReport;
use kiln_block::qcow2::repair::RepairMode;
use kiln_block::Format;
use kiln_block::Share;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct JsonReport {
    filename: String,
    format: &'static str,
    #[serde(rename = "check-errors")]
    check_errors: u64,
    #[serde(skip_serializing_if = "is_zero")]
    corruptions: u64,
    #[serde(skip_serializing_if = "is_zero")]
    leaks: u64,
    #[serde(rename = "image-end-offset")]
    image_end_offset: u64,
    #[serde(rename = "total-clusters")]
    total_clusters: u64,
    #[serde(rename = "allocated-clusters")]
    allocated_clusters: u64,
    #[serde(rename = "fragmented-clusters", skip_serializing_if = "is_zero")]
    fragmented_clusters: u64,
    #[serde(rename = "compressed-clusters", skip_serializing_if = "is_zero")]
    compressed_clusters: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn pct(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 * 100.0 / d as f64
    }
}

/// `kiln img check`.
pub(super) fn check(
    format: Option<&str>,
    repair: Option<&str>,
    output: &str,
    file: &Path,
    share: Share,
) -> Result<u8, String> {
    if output != "human" && output != "json" {
        return Err(format!("--output must be human or json, not '{output}'"));
    }
    let mode = match repair {
        None => None,
        Some("leaks") => Some(RepairMode::Leaks),
        Some("all") => Some(RepairMode::All),
        Some(other) => return Err(format!("-r must be 'leaks' or 'all', not '{other}'")),
    };
    let format = match parse_format(format)? {
        Some(f) => f,
        None => kiln_block::probe(file).map_err(|e| e.to_string())?,
    };
    if format != Format::Qcow2 {
        return Err(format!(
            "{}: format '{format}' does not support checks",
            file.display()
        ));
    }
    let Some(mode) = mode else {
        let r: CheckReport =
            kiln_block::qcow2::check::check_shared(file, share).map_err(|e| e.to_string())?;
        return Ok(report(&r, file, output, ""));
    };
    if share == Share::Force {
        return Err(format!(
            "{}: force-share (-U) can only be used with read-only images (not with -r)",
            file.display()
        ));
    }
    let rep = kiln_block::qcow2::repair::repair(file, mode).map_err(|e| e.to_string())?;
    for m in rep.before.messages.iter().chain(&rep.messages) {
        eprintln!("{m}");
    }
    if rep.needs_rebuild {
        // qemu-img's wording and status: the check fails and nothing is repaired.
        eprintln!("ERROR need to rebuild refcount structures");
        return Err(
            "Check failed: Input/output error (use -r all to rebuild the refcounts)".into(),
        );
    }
    let mut head = String::new();
    if rep.leaks_fixed + rep.corruptions_fixed > 0 {
        head = format!(
            "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
            rep.leaks_fixed, rep.corruptions_fixed
        );
    }
    let mut after = rep.after;
    after.messages.clear();
    Ok(report(&after, file, output, &head))
}

/// Print a check report (after `head`, human output only); returns the exit status.
fn report(r: &CheckReport, file: &Path, output: &str, head: &str) -> u8 {
    let status = if r.check_errors > 0 {
        1
    } else if r.corruptions > 0 {
        2
    } else if r.leaks > 0 {
        3
    } else {
        0
    };
    if output == "json" {
        let j = JsonReport {
            filename: file.display().to_string(),
            format: "qcow2",
            check_errors: r.check_errors,
            corruptions: r.corruptions,
            leaks: r.leaks,
            image_end_offset: r.image_end_offset,
            total_clusters: r.total_clusters,
            allocated_clusters: r.allocated_clusters,
            fragmented_clusters: r.fragmented_clusters,
            compressed_clusters: r.compressed_clusters,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&j).expect("a plain struct serializes")
        );
        return status;
    }
    for m in &r.messages {
        eprintln!("{m}");
    }
    let mut out = head.to_string();
    if status == 0 {
        out += "No errors were found on the image.\n";
    } else {
        if r.corruptions > 0 {
            out += &format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                r.corruptions
            );
        }
        if r.leaks > 0 {
            out += &format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                r.leaks
            );
        }
    }
    out += &format!(
        "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\nImage end offset: {}\n",
        r.allocated_clusters,
        r.total_clusters,
        pct(r.allocated_clusters, r.total_clusters),
        pct(r.fragmented_clusters, r.allocated_clusters),
        pct(r.compressed_clusters, r.allocated_clusters),
        r.image_end_offset
    );
    print!("{out}");
    status
}
