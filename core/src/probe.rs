//! Tiny static Linux programs that exit with [`EXIT_CODE`] and do nothing else: the only sure
//! way to learn, from inside a container, whether a CPU architecture runs there. binfmt_misc is
//! not mounted in containers, so a registered Rosetta or qemu handler cannot be read; running a
//! program of that architecture either works or it does not.
//!
//! Each is an ELF64 header, one `PT_LOAD` program header, and three instructions:
//! `exit(42)` by a raw system call.

/// What every probe exits with; anything else means it did not run as itself.
pub const EXIT_CODE: u8 = 42;

/// A CPU architecture builderd can probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// `uname -m`'s name, which is also the prefix of the Nix system (`x86_64-linux`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    pub fn nix_system(self) -> String {
        format!("{}-linux", self.name())
    }

    fn e_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Aarch64 => 183,
        }
    }

    /// `exit(42)`.
    fn code(self) -> Vec<u8> {
        match self {
            // mov edi, 42; mov eax, 60 (exit); syscall
            Arch::X86_64 => vec![0xbf, EXIT_CODE, 0, 0, 0, 0xb8, 60, 0, 0, 0, 0x0f, 0x05],
            // movz x0, #42; movz x8, #93 (exit); svc #0
            Arch::Aarch64 => [
                0xd280_0000u32 | (u32::from(EXIT_CODE) << 5),
                0xd280_0008 | (93 << 5),
                0xd400_0001,
            ]
            .iter()
            .flat_map(|i| i.to_le_bytes())
            .collect(),
        }
    }
}

const BASE: u64 = 0x40_0000;
const HEADERS: u64 = 64 + 56;

/// The probe program for `arch`.
pub fn program(arch: Arch) -> Vec<u8> {
    let code = arch.code();
    let size = HEADERS + code.len() as u64;
    let mut b = Vec::with_capacity(size as usize);
    // ELF header: 64-bit, little-endian, version 1, System V ABI, an executable.
    b.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
    b.extend_from_slice(&arch.e_machine().to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // e_version
    b.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // e_entry
    b.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    b.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    b.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    // Program header: load the whole file read+execute at BASE.
    b.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b.extend_from_slice(&5u32.to_le_bytes()); // PF_R | PF_X
    b.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    b.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    b.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    b.extend_from_slice(&size.to_le_bytes()); // p_filesz
    b.extend_from_slice(&size.to_le_bytes()); // p_memsz
    b.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    b.extend_from_slice(&code);
    debug_assert_eq!(b.len() as u64, size);
    b
}

/// The architecture this program was built for, when it is one builderd can probe.
pub fn host_arch() -> Option<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => Some(Arch::X86_64),
        "aarch64" => Some(Arch::Aarch64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_host_runs_its_own_probe_and_it_exits_42() {
        let arch = host_arch().expect("tests run on x86_64 or aarch64");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(format!("probe-{}", arch.name()));
        std::fs::write(&p, program(arch)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let st = std::process::Command::new(&p).status().unwrap();
        assert_eq!(st.code(), Some(i32::from(EXIT_CODE)));
    }

    #[test]
    fn headers_name_the_architecture() {
        for arch in Arch::ALL {
            let p = program(arch);
            assert_eq!(&p[..4], b"\x7fELF");
            assert_eq!(u16::from_le_bytes([p[18], p[19]]), arch.e_machine());
            assert_eq!(p.len(), 120 + 12);
        }
        // The x86_64 probe is the well-known 132-byte exit(42) program.
        assert_eq!(program(Arch::X86_64).len(), 132);
    }
}
