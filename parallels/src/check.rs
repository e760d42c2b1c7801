//! `check` and repair with QEMU's semantics (`parallels_co_check`; `docs/parallels.md` §3), in
//! QEMU's order: unclean (`in_use`), `data_off`, clusters outside the image, leaks at the tail,
//! duplicate BAT entries.

use std::collections::BTreeMap;

use fvd_contract::WriteFlags;

use crate::format::ParallelsError;
use crate::image::{ParallelsImage, data_off_valid, io};

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParallelsCheckReport {
    /// Corruptions found (fixed ones included).
    pub corruptions: u64,
    /// Corruptions fixed.
    pub corruptions_fixed: u64,
    /// Leaked clusters (the file extends past the last cluster the BAT names).
    pub leaks: u64,
    /// Leaks fixed (the file truncated).
    pub leaks_fixed: u64,
    /// Clusters the BAT names.
    pub allocated_clusters: u64,
    /// End of the last cluster the BAT names (or the data area's start), bytes.
    pub image_end_offset: u64,
    /// True if the image was left in use (`in_use` set): counted as a corruption, as QEMU does.
    pub unclean: bool,
    /// One line per finding, naming the entry (the unclean flag first, if set).
    pub messages: Vec<String>,
    /// The line about the leaked tail, if any (also in `messages`).
    pub leak_message: Option<String>,
}

impl ParallelsCheckReport {
    /// True if nothing is left corrupt (leaks are not corruption).
    pub fn is_consistent(&self) -> bool {
        self.corruptions == self.corruptions_fixed
    }

    /// The corruption lines other than the unclean flag (which a writer's open image always
    /// has), in check order; leaks are not among them.
    pub fn corruption_messages(&self) -> impl Iterator<Item = &str> {
        self.messages
            .iter()
            .skip(usize::from(self.unclean))
            .filter(|m| Some(*m) != self.leak_message.as_ref())
            .map(String::as_str)
    }
}

impl ParallelsImage {
    /// Checks the image; with `fix` (a writable image), repairs what QEMU repairs: the unclean
    /// flag (cleared at close), a bad `data_off` (rewritten), BAT entries outside the file
    /// (zeroed), the leaked tail (truncated), duplicate entries (the cluster copied to a new one).
    ///
    /// Errors: [`ParallelsError::Io`], or [`ParallelsError::Corrupt`] when fixing a read-only image.
    pub async fn check(&self, fix: bool) -> Result<ParallelsCheckReport, ParallelsError> {
        if fix && !self.writable {
            return Err(crate::format::corrupt("open mode", "read-only", "repair needs a writable image"));
        }
        let mut report = ParallelsCheckReport::default();
        let header = self.header();
        let cluster = header.cluster_bytes();
        let file_bytes = self.image.len_bytes();
        // 1. Unclean.
        if header.in_use() {
            report.unclean = true;
            report.corruptions += 1;
            report.messages.push("image was not closed correctly".into());
            if fix {
                report.corruptions_fixed += 1;
            }
        }
        // 2. data_off.
        if !data_off_valid(&header, file_bytes) {
            report.corruptions += 1;
            report.messages.push(format!("data_off field has incorrect value {}", header.data_off_sectors));
            if fix {
                self.header.borrow_mut().data_off_sectors = header.min_data_off_sectors();
                self.write_header().await?;
                report.corruptions_fixed += 1;
            }
        }
        let data_off = self.header.borrow().data_off_sectors * 512;
        // 3. Outside the image.
        let mut bat_changed = false;
        for index in 0..header.bat_entries as usize {
            let entry = self.bat.borrow()[index];
            if entry == 0 {
                continue;
            }
            let host = header.entry_offset(entry);
            if host + cluster > file_bytes || host < data_off {
                report.corruptions += 1;
                report.messages.push(format!("cluster {index} is outside image"));
                if fix {
                    self.bat.borrow_mut()[index] = 0;
                    bat_changed = true;
                    report.corruptions_fixed += 1;
                }
            }
        }
        let image_end = self
            .bat
            .borrow()
            .iter()
            .filter(|e| **e != 0)
            .map(|e| header.entry_offset(*e) + cluster)
            .filter(|end| *end <= file_bytes)
            .max()
            .unwrap_or(0)
            .max(data_off);
        report.image_end_offset = image_end;
        // 4. Leaks at the tail.
        if file_bytes > image_end {
            report.leaks = (file_bytes - image_end).div_ceil(cluster);
            let message = format!("space leaked at the end of the image {}", file_bytes - image_end);
            report.leak_message = Some(message.clone());
            report.messages.push(message);
            if fix {
                self.image.set_len(image_end).await.map_err(io("check: truncate the leaked tail"))?;
                report.leaks_fixed = report.leaks;
            }
        }
        self.data_end.set(image_end);
        // 5. Duplicates.
        let mut owner: BTreeMap<u32, usize> = BTreeMap::new();
        for index in 0..header.bat_entries as usize {
            let entry = self.bat.borrow()[index];
            if entry == 0 {
                continue;
            }
            if owner.insert(entry, index).is_none() {
                continue;
            }
            report.corruptions += 1;
            report.messages.push(format!("duplicate offset in BAT entry {index}"));
            if fix {
                let from = header.entry_offset(entry);
                let to = self.data_end.get();
                let mut data = vec![0u8; cluster as usize];
                self.image.read_at(from, &mut data).await.map_err(io("check: read a duplicate cluster"))?;
                self.image.set_len(to + cluster).await.map_err(io("check: grow for a duplicate"))?;
                self.image.write_at(to, &data, WriteFlags::NONE).await.map_err(io("check: copy a duplicate"))?;
                self.data_end.set(to + cluster);
                self.bat.borrow_mut()[index] = header.entry_value(to);
                bat_changed = true;
                report.corruptions_fixed += 1;
            }
        }
        report.allocated_clusters = self.bat.borrow().iter().filter(|e| **e != 0).count() as u64;
        if bat_changed {
            self.write_bat().await?;
        }
        if fix {
            self.image.flush().await.map_err(io("check: flush"))?;
        }
        Ok(report)
    }
}
