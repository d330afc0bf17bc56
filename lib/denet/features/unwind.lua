-- User stacks walked in the kernel from unwind tables (bpf-src/unwind.c,
-- lib/denet/stacks/dwarf.lua): whole stacks on binaries without frame
-- pointers. Its text is compiled with -DDN_DWARF_UNWIND only.
return {
  name = "unwind",
  description = "user stacks walked from unwind tables (.eh_frame)",
  bpf = {
    file = "unwind.c",
    order = 45,
    needs = { "tree", "insys" },
  },
}
