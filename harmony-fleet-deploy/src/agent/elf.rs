//! What an agent binary is, read from its ELF header before it is sent to a host: the machine
//! it runs on, and whether it is static (no program interpreter), so a host gets a binary
//! that runs whatever C library it has — or a clear refusal instead of a unit that fails to
//! start.

/// The `uname -m` names of an ELF `e_machine` this project builds for.
fn machine_name(e_machine: u16) -> Option<&'static str> {
    match e_machine {
        62 => Some("x86_64"),
        183 => Some("aarch64"),
        40 => Some("armv7l"),
        243 => Some("riscv64"),
        _ => None,
    }
}

/// The machine (`uname -m` name) an ELF executable is built for, or what it is instead.
pub fn machine_of(bytes: &[u8]) -> Result<&'static str, String> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return Err("is not an ELF executable".into());
    }
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    machine_name(machine)
        .ok_or_else(|| format!("is built for an unknown machine (ELF machine {machine})"))
}

/// Checks that `bytes` is a static 64- or 32-bit little-endian ELF executable for `arch` (as
/// `uname -m` prints it). The error says what the binary is instead.
pub fn check_static_for(bytes: &[u8], arch: &str) -> Result<(), String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("is not an ELF executable".into());
    }
    let class64 = match bytes[4] {
        2 => true,
        1 => false,
        other => return Err(format!("has an unknown ELF class {other}")),
    };
    if bytes[5] != 1 {
        return Err("is big-endian; hosts here are little-endian".into());
    }
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let truncated = || "has a truncated ELF header".to_owned();
    let machine = u16_at(18).ok_or_else(truncated)?;
    let built_for = machine_name(machine).unwrap_or("an unknown machine");
    if built_for != arch {
        return Err(format!(
            "is built for {built_for} (ELF machine {machine}), not {arch}"
        ));
    }
    let (phoff, phentsize, phnum) = if class64 {
        (
            u64_at(32).ok_or_else(truncated)?,
            u16_at(54).ok_or_else(truncated)?,
            u16_at(56).ok_or_else(truncated)?,
        )
    } else {
        (
            u64::from(u32_at(28).ok_or_else(truncated)?),
            u16_at(42).ok_or_else(truncated)?,
            u16_at(44).ok_or_else(truncated)?,
        )
    };
    for i in 0..u64::from(phnum) {
        let at = phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|at| usize::try_from(at).ok())
            .ok_or_else(truncated)?;
        const PT_INTERP: u32 = 3;
        if u32_at(at).ok_or_else(truncated)? == PT_INTERP {
            return Err(
                "is dynamically linked (it names a program interpreter), so it runs only where \
                 the same C library is installed"
                    .into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal 64-bit ELF header for `machine` with one program header of `p_type`.
    fn elf(machine: u16, p_type: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 64 + 56];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[18..20].copy_from_slice(&machine.to_le_bytes());
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes());
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&1u16.to_le_bytes());
        bytes[64..68].copy_from_slice(&p_type.to_le_bytes());
        bytes
    }

    #[test]
    fn names_the_machine_a_binary_is_for() {
        assert_eq!(machine_of(&elf(62, 1)), Ok("x86_64"));
        assert_eq!(machine_of(&elf(183, 1)), Ok("aarch64"));
        assert!(
            machine_of(&elf(3, 1))
                .expect_err("i386")
                .contains("unknown machine")
        );
        assert!(
            machine_of(b"#!/bin/sh\n")
                .expect_err("script")
                .contains("not an ELF")
        );
    }

    #[test]
    fn a_static_binary_for_the_arch_passes() {
        assert_eq!(check_static_for(&elf(62, 1), "x86_64"), Ok(()));
        assert_eq!(check_static_for(&elf(183, 1), "aarch64"), Ok(()));
    }

    #[test]
    fn a_dynamic_or_foreign_binary_is_refused_saying_what_it_is() {
        let dynamic = check_static_for(&elf(62, 3), "x86_64").expect_err("dynamic");
        assert!(dynamic.contains("dynamically linked"), "{dynamic}");
        let foreign = check_static_for(&elf(183, 1), "x86_64").expect_err("aarch64");
        assert!(foreign.contains("built for aarch64"), "{foreign}");
        let text = check_static_for(b"#!/bin/sh\n", "x86_64").expect_err("script");
        assert!(text.contains("not an ELF"), "{text}");
    }
}
