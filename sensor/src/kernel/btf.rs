//! Just enough of a BTF reader to find struct member offsets in the running kernel
//! (`/sys/kernel/btf/vmlinux`). Rust eBPF has no CO-RE relocations yet, so the loader looks
//! up the offsets a hook needs here and hands them to the programs as globals.
use std::path::Path;

/// Where the kernel publishes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF data (bad magic or truncated header)")]
    BadHeader,
    #[error("BTF type section is truncated at type {id}")]
    Truncated { id: usize },
    #[error("BTF has no struct named `{name}`")]
    NoStruct { name: String },
    #[error("struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
    #[error("member `{member}` of `{strukt}` is not an array")]
    NotArray { strukt: String, member: String },
    #[error("member `{member}` of `{strukt}` is a bitfield")]
    Bitfield { strukt: String, member: String },
}

#[derive(Debug)]
struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
    bitfield: bool,
}

#[derive(Debug)]
struct Type {
    kind: u32,
    name: u32,
    /// Referenced type id for typedef/const/volatile/...
    size_or_type: u32,
    members: Vec<Member>,
    /// Elements of an array type.
    nelems: u32,
}

/// Parsed BTF types and strings.
pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        if b.len() < 24 || u16::from_le_bytes([b[0], b[1]]) != MAGIC {
            return Err(BtfError::BadHeader);
        }
        let field = |at| u32_at(b, at).map(|v| v as usize).ok_or(BtfError::BadHeader);
        let hdr_len = field(4)?;
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let types_raw = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::BadHeader)?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::BadHeader)?
            .to_vec();

        let mut types = vec![Type {
            kind: 0,
            name: 0,
            size_or_type: 0,
            members: Vec::new(),
            nelems: 0,
        }];
        let mut at = 0;
        while at < types_raw.len() {
            let id = types.len();
            let rd = |o: usize| u32_at(types_raw, at + o).ok_or(BtfError::Truncated { id });
            let (name, info, size_or_type) = (rd(0)?, rd(4)?, rd(8)?);
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let mut members = Vec::new();
            let mut nelems = 0;
            let extra = match kind {
                1 | 14 | 17 => 4, // int, var, decl_tag
                KIND_ARRAY => {
                    nelems = u32_at(types_raw, at + 8).ok_or(BtfError::Truncated { id })?;
                    12
                }
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = |o: usize| {
                            u32_at(types_raw, at + i * 12 + o).ok_or(BtfError::Truncated { id })
                        };
                        let off = m(8)?;
                        members.push(Member {
                            name: m(0)?,
                            ty: m(4)?,
                            bit_offset: if kind_flag { off & 0xff_ffff } else { off },
                            bitfield: kind_flag && (off >> 24) != 0,
                        });
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,   // enum, func_proto
                15 | 19 => vlen * 12, // datasec, enum64
                _ => 0,
            };
            at += extra;
            types.push(Type {
                kind,
                name,
                size_or_type,
                members,
                nelems,
            });
        }
        Ok(Self { strings, types })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())]
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `path` (members separated by `.`) inside struct `strukt`, looking
    /// through anonymous structs and unions the way C does.
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        self.member(strukt, path).map(|(off, _)| off)
    }

    /// Elements of array member `path` of struct `strukt`.
    pub fn member_array_len(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        match self.member(strukt, path)? {
            (_, t) if t.kind == KIND_ARRAY => Ok(t.nelems),
            _ => Err(BtfError::NotArray {
                strukt: strukt.to_string(),
                member: path.to_string(),
            }),
        }
    }

    fn member(&self, strukt: &str, path: &str) -> Result<(u32, &Type), BtfError> {
        let root = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name) == strukt.as_bytes())
            .ok_or_else(|| BtfError::NoStruct {
                name: strukt.to_string(),
            })?;
        let mut ty = root;
        let mut total_bits = 0u32;
        for part in path.split('.') {
            let (bits, next) =
                self.find_member(ty, part.as_bytes(), 0)
                    .ok_or_else(|| BtfError::NoMember {
                        strukt: strukt.to_string(),
                        member: path.to_string(),
                    })?;
            total_bits += bits;
            ty = next;
        }
        if !total_bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield {
                strukt: strukt.to_string(),
                member: path.to_string(),
            });
        }
        Ok((total_bits / 8, ty))
    }

    fn find_member<'a>(&'a self, ty: &'a Type, name: &[u8], depth: u32) -> Option<(u32, &'a Type)> {
        if depth > 8 {
            return None;
        }
        for m in &ty.members {
            let mname = self.name(m.name);
            if mname == name {
                if m.bitfield {
                    return None;
                }
                return Some((m.bit_offset, self.resolve(m.ty)?));
            }
            if mname.is_empty() {
                let inner = self.resolve(m.ty)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((bits, t)) = self.find_member(inner, name, depth + 1)
                {
                    return Some((m.bit_offset + bits, t));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct inner { int a; int b; }`,
    /// `struct outer { int x; union { struct inner in; long y; }; struct inner named; }`,
    /// `struct arr { int v[5]; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0in\0y\0named\0long\0arr\0v\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            (strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap()
                + 1) as u32
        };
        let mut t = Vec::new();
        let mut push = |v: &[u32]| v.iter().for_each(|x| t.extend_from_slice(&x.to_le_bytes()));
        push(&[s("int"), 1 << 24, 4, 32]); // 1: int
        push(&[s("inner"), (4 << 24) | 2, 8, s("a"), 1, 0, s("b"), 1, 32]); // 2
        push(&[0, (5 << 24) | 2, 8, s("in"), 2, 0, s("y"), 5, 0]); // 3: anon union
        push(&[
            s("outer"),
            (4 << 24) | 3,
            20,
            s("x"),
            1,
            0,
            0,
            3,
            32,
            s("named"),
            2,
            96,
        ]); // 4
        push(&[s("long"), 1 << 24, 8, 64]); // 5
        push(&[0, 3 << 24, 0, 1, 1, 5]); // 6: int[5]
        push(&[s("arr"), (4 << 24) | 1, 20, s("v"), 6, 0]); // 7
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn finds_direct_anonymous_and_nested_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "in.b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "named.b").unwrap(), 16);
        assert!(matches!(
            btf.member_offset("outer", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "x"),
            Err(BtfError::NoStruct { .. })
        ));
        assert_eq!(btf.member_array_len("arr", "v").unwrap(), 5);
        assert!(matches!(
            btf.member_array_len("outer", "x"),
            Err(BtfError::NotArray { .. })
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(b"not btf at all, not at all"),
            Err(BtfError::BadHeader)
        ));
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    #[test]
    fn running_kernel_has_task_struct_offsets() {
        let Ok(btf) = Btf::from_sys_fs() else {
            assert!(
                std::env::var("MINERWATCH_E2E").map_or(true, |v| v != "required"),
                "no {VMLINUX} on this kernel, and MINERWATCH_E2E=required"
            );
            eprintln!("skipped: no {VMLINUX} on this kernel");
            return;
        };
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        let parent = btf.member_offset("task_struct", "real_parent").unwrap();
        assert!(tgid > 0 && parent > 0 && tgid != parent);
        // What the exec and exit hooks read: inside an anonymous struct in mm_struct.
        let start = btf.member_offset("mm_struct", "arg_start").unwrap();
        let end = btf.member_offset("mm_struct", "arg_end").unwrap();
        assert_eq!(end, start + 8);
        assert!(btf.member_offset("signal_struct", "live").unwrap() > 0);
        // The RandomX fingerprint: the saved MXCSR behind `fpu->fpstate` (5.16+), at byte 24
        // of the legacy FXSAVE area that starts the register union.
        if cfg!(target_arch = "x86_64") {
            assert!(btf.member_offset("fpu", "fpstate").unwrap() > 0);
            let regs = btf.member_offset("fpstate", "regs").unwrap();
            let mxcsr = btf
                .member_offset("fpstate", "regs.xsave.i387.mxcsr")
                .unwrap();
            assert_eq!(mxcsr, regs + 24);
        }
        // The v1 cgroup key: one `css_set.subsys` slot per row of /proc/cgroups.
        let rows = std::fs::read_to_string("/proc/cgroups")
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count();
        assert_eq!(
            btf.member_array_len("css_set", "subsys").unwrap() as usize,
            rows
        );
    }
}
