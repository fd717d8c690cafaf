/*
 * Everything the test guest runs at CPL0, in assembly.
 *
 * On PVM hosts guest CPL0 code is emulated (about 2000x slower than native)
 * and the emulator lacks instructions compilers like to emit (SSE forms,
 * cmpxchg16b, ...). So no compiled code ever runs at CPL0: this file brings a
 * CPU from the PVH entry (or the AP trampoline) to long mode, loads the GDT,
 * a TSS with an all-zero I/O bitmap and the IDT, and drops to CPL3 with
 * IOPL=3, where the Rust code lives. Exceptions are bounced back to a CPL3
 * reporter; interrupts only count and EOI; a `ud2` at cpl0_gate is the gate
 * for the few privileged instructions CPL3 needs (rdmsr/wrmsr).
 */

.set MAX_CPUS, 32
.set KSTACK_SIZE, 8192          /* CPL0 stack per CPU (exceptions, irqs) */
.set USTACK_SIZE, 131072        /* CPL3 stack per CPU */
.set FSTACK_SIZE, 16384         /* CPL3 stack for the fault reporter */
.set TSS_IOPB, 104              /* I/O bitmap right after the TSS */
.set TSS_LIMIT, 104 + 8192      /* TSS + 65536-port bitmap + 0xff terminator */
.set TSS_STRIDE, 8320

.set SEL_KCODE64, 0x08
.set SEL_KDATA, 0x10
.set SEL_KCODE32, 0x18
.set SEL_UDATA, 0x23
.set SEL_UCODE64, 0x2b
.set SEL_TSS0, 0x30

.set USER_RFLAGS, 0x3002        /* IOPL=3, IF=0 */

/* ---------------------------------------------------------------- notes */
.section .note.Xen, "a"
.balign 4
    .long 4                     /* namesz */
    .long 4                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

/* ------------------------------------------------------------------ data */
.section .data.boot, "aw"
.balign 16
.global gdt
gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08 code64, DPL0 */
    .quad 0x00cf92000000ffff    /* 0x10 data, DPL0 */
    .quad 0x00cf9a000000ffff    /* 0x18 code32, DPL0 (trampoline) */
    .quad 0x00cff2000000ffff    /* 0x20 data, DPL3 */
    .quad 0x00affa000000ffff    /* 0x28 code64, DPL3 */
gdt_tss:
    .fill MAX_CPUS * 2, 8, 0    /* 0x30 + 16*i: TSS of CPU i */
gdt_end:

.balign 16
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
.balign 16
idt_ptr:
    .word 256 * 16 - 1
    .quad idt

null_idt_ptr:
    .word 0
    .quad 0

.global start_info_ptr
start_info_ptr:
    .quad 0
.global boot_params_ptr
boot_params_ptr:
    .quad 0
/* Index of the CPU that runs long_entry next: 0 for the BSP, set by the
 * BSP's Rust code before each INIT-SIPI-SIPI (APs start one at a time). */
.global boot_cpu_index
boot_cpu_index:
    .quad 0

/* ------------------------------------------------------------------- bss */
.section .bss.boot, "aw", @nobits
.balign 4096
.global boot_pml4
boot_pml4:
    .skip 4096
.global boot_pdpt
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4              /* 0 .. 4 GiB in 2 MiB pages */
idt:
    .skip 256 * 16
.balign 64
tss_area:
    .skip TSS_STRIDE * MAX_CPUS
.balign 4096
kstacks:
    .skip KSTACK_SIZE * MAX_CPUS
ustacks:
    .skip USTACK_SIZE * MAX_CPUS
fstacks:
    .skip FSTACK_SIZE * MAX_CPUS
.global irq_counts
irq_counts:
    .skip 256 * 8

/* ------------------------------------------------------------ 32-bit entry */
.section .text.boot, "ax"
.code32
.global pvh_start
pvh_start:
    cli
    cld
    movl %ebx, start_info_ptr
    movl %esi, boot_params_ptr  /* Linux 32-bit boot protocol: the zero page */
    lgdt gdt_ptr
    ljmpl $SEL_KCODE32, $1f
1:
    movw $SEL_KDATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs

    /* PML4[0] -> PDPT; PDPT[0..4] -> 4 PDs; PD entries: 2 MiB identity pages,
     * user-accessible so that CPL3 code can touch RAM, MMIO and extend the
     * tables itself (the Rust side maps anything above 4 GiB). */
    movl $boot_pdpt, %eax
    orl $7, %eax
    movl %eax, boot_pml4
    xorl %ecx, %ecx
2:
    movl %ecx, %eax
    shll $12, %eax
    addl $boot_pd, %eax
    orl $7, %eax
    movl %eax, boot_pdpt(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jb 2b
    xorl %ecx, %ecx
3:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x87, %eax             /* P | RW | US | PS */
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 3b

    movl $0, boot_cpu_index
    jmp pm32_common

/* Both the BSP and the APs arrive here: 32-bit protected mode, flat segments,
 * paging off, no stack. */
pm32_common:
    movl %cr4, %eax
    orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax   /* PAE, OSFXSR, OSXMMEXCPT */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx      /* EFER */
    rdmsr
    orl $(1 << 8), %eax         /* LME */
    wrmsr
    movl %cr0, %eax
    andl $0x9ffffffb, %eax      /* clear CD, NW (set after INIT) and EM */
    orl $0x80000023, %eax       /* PG, NE, MP, PE */
    movl %eax, %cr0
    lgdt gdt_ptr
    ljmpl $SEL_KCODE64, $long_entry

/* Reached from the AP trampoline in protected mode. */
.global ap_pm32
ap_pm32:
    movw $SEL_KDATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    jmp pm32_common

/* ------------------------------------------------------------ 64-bit entry */
.code64
long_entry:
    movw $SEL_KDATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs

    movq boot_cpu_index(%rip), %rdi

    /* CPL0 stack: top of this CPU's kernel stack */
    leaq 1(%rdi), %rax
    imulq $KSTACK_SIZE, %rax
    leaq kstacks(%rip), %rsp
    addq %rax, %rsp

    /* TSS of this CPU: RSP0, I/O bitmap offset and terminator */
    movq %rdi, %rax
    imulq $TSS_STRIDE, %rax
    leaq tss_area(%rip), %rbx
    addq %rax, %rbx
    movq %rsp, 4(%rbx)
    movw $TSS_IOPB, 102(%rbx)
    movb $0xff, TSS_IOPB + 8192(%rbx)

    /* its 16-byte descriptor in the GDT */
    leaq gdt_tss(%rip), %rsi
    movq %rdi, %rax
    shlq $4, %rax
    addq %rax, %rsi
    movq %rbx, %rax
    andq $0xffff, %rax
    shlq $16, %rax
    orq $TSS_LIMIT, %rax
    movq %rbx, %rdx
    shrq $16, %rdx
    andq $0xff, %rdx
    shlq $32, %rdx
    orq %rdx, %rax
    movq $0x89, %rdx            /* present, 64-bit available TSS */
    shlq $40, %rdx
    orq %rdx, %rax
    movq %rbx, %rdx
    shrq $24, %rdx
    andq $0xff, %rdx
    shlq $56, %rdx
    orq %rdx, %rax
    movq %rax, (%rsi)
    movq %rbx, %rax
    shrq $32, %rax
    movq %rax, 8(%rsi)
    movq %rdi, %rax
    shlq $4, %rax
    addq $SEL_TSS0, %rax
    ltr %ax

    /* The BSP fills the IDT: vector v -> isr_stubs + 16*v, interrupt gate */
    testq %rdi, %rdi
    jnz 2f
    xorl %ecx, %ecx
    leaq idt(%rip), %rsi
    leaq isr_stubs(%rip), %rdx
1:
    movq %rcx, %rax
    shlq $4, %rax
    addq %rdx, %rax
    movq %rax, %r8
    andq $0xffff, %r8
    movq $SEL_KCODE64, %r9
    shlq $16, %r9
    orq %r9, %r8
    movq $0x8e, %r9
    shlq $40, %r9
    orq %r9, %r8
    movq %rax, %r9
    shrq $16, %r9
    andq $0xffff, %r9
    shlq $48, %r9
    orq %r9, %r8
    movq %r8, (%rsi)
    shrq $32, %rax
    movq %rax, 8(%rsi)
    addq $16, %rsi
    incl %ecx
    cmpl $256, %ecx
    jb 1b
2:
    lidt idt_ptr(%rip)

    /* Drop to CPL3: cpu_entry(index, start_info, boot_params) on this CPU's user stack */
    leaq 1(%rdi), %rax
    imulq $USTACK_SIZE, %rax
    leaq ustacks(%rip), %rdx
    addq %rax, %rdx
    subq $8, %rdx
    pushq $SEL_UDATA
    pushq %rdx
    pushq $USER_RFLAGS
    pushq $SEL_UCODE64
    leaq cpu_entry(%rip), %rax
    pushq %rax
    movq start_info_ptr(%rip), %rsi
    movq boot_params_ptr(%rip), %rdx
    iretq

/* ----------------------------------------------------- exceptions and irqs */
.balign 16
isr_stubs:
.set vec, 0
.rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
.endr

/* Stack: vector, error code, rip, cs, rflags, rsp, ss. */
isr_common:
    cmpq $32, (%rsp)
    jae irq_common
    cmpq $6, (%rsp)
    jne 1f
    pushq %rax
    leaq cpl0_gate(%rip), %rax
    cmpq %rax, 24(%rsp)
    popq %rax
    je gate_op
1:
    /* An exception: no CPL0 printing. Rewrite the frame so that iretq lands
     * in the CPL3 reporter fault_entry(vector, error, rip, cr2, cs, cpu) on a
     * fresh stack of the faulting CPU. */
    movq (%rsp), %rdi
    movq 8(%rsp), %rsi
    movq 16(%rsp), %rdx
    movq %cr2, %rcx
    movq 24(%rsp), %r8
    movq %rsp, %r9
    leaq kstacks(%rip), %rax
    subq %rax, %r9
    shrq $13, %r9               /* / KSTACK_SIZE */
    leaq 1(%r9), %rax
    imulq $FSTACK_SIZE, %rax
    leaq fstacks(%rip), %r10
    addq %r10, %rax
    subq $8, %rax
    movq %rax, 40(%rsp)
    leaq fault_entry(%rip), %rax
    movq %rax, 16(%rsp)
    movq $SEL_UCODE64, 24(%rsp)
    movq $USER_RFLAGS, 32(%rsp)
    movq $SEL_UDATA, 48(%rsp)
    addq $16, %rsp
    iretq

/* External interrupts (MSI-X, IPIs): count, EOI the local APIC, return. */
irq_common:
    pushq %rax
    movq 8(%rsp), %rax
    lock incq irq_counts(,%rax,8)
    movq $0xfee000b0, %rax
    movl $0, (%rax)
    popq %rax
    addq $16, %rsp
    iretq

/* The CPL0 gate: CPL3 code calls cpl0_gate with rax = operation and
 * rdi/rsi = arguments; the ud2 raises #UD, whose handler (isr_common) sees
 * the gate's address, performs the operation and resumes after the ud2.
 * (PVM's `syscall` reaches LSTAR without CPL0 privilege, so it cannot be
 * the gate.) Result in rax; clobbers rcx, rdx. */
.balign 16
.global cpl0_gate
cpl0_gate:
    ud2
    ret

/* rax = op: 1 = rdmsr(rdi), 2 = wrmsr(rdi, rsi), 3 = enable interrupts,
 * 4 = disable interrupts, 5 = triple fault (for the VMM's lifecycle tests),
 * 6 = cpuid(leaf rdi, sub-leaf rsi) -> ebx:eax, 7 = the same -> edx:ecx,
 * 8 = enable AVX (CR4.OSXSAVE, XCR0 = x87 | SSE | AVX)
 * (CPUID at CPL3 is the host's on PVM; at CPL0 it is the VM's) (PVM raises #GP for sti/cli at CPL3 even with
 * IOPL=3, so IF is changed in the frame iretq returns through). Called with
 * the #UD frame on the stack (vector, error, rip, cs, rflags, ...). */
gate_op:
    cmpq $1, %rax
    je 1f
    cmpq $2, %rax
    je 2f
    cmpq $3, %rax
    je 3f
    cmpq $4, %rax
    je 4f
    cmpq $5, %rax
    je 5f
    cmpq $6, %rax
    je 6f
    cmpq $7, %rax
    je 7f
    cmpq $8, %rax
    je 8f
    movq $-1, %rax
    jmp 9f
1:
    movl %edi, %ecx
    rdmsr
    shlq $32, %rdx
    movl %eax, %eax
    orq %rdx, %rax
    jmp 9f
2:
    movl %edi, %ecx
    movl %esi, %eax
    movq %rsi, %rdx
    shrq $32, %rdx
    wrmsr
    xorl %eax, %eax
    jmp 9f
3:
    orq $0x200, 32(%rsp)
    xorl %eax, %eax
    jmp 9f
4:
    andq $~0x200, 32(%rsp)
    xorl %eax, %eax
    jmp 9f
5:
    /* An empty IDT: the #UD below can be delivered nowhere -> #DF -> shutdown. */
    lidt null_idt_ptr(%rip)
    ud2
6:
    pushq %rbx
    movl %edi, %eax
    movl %esi, %ecx
    cpuid
    shlq $32, %rbx
    movl %eax, %eax
    orq %rbx, %rax
    popq %rbx
    jmp 9f
7:
    pushq %rbx
    movl %edi, %eax
    movl %esi, %ecx
    cpuid
    shlq $32, %rdx
    movl %ecx, %eax
    orq %rdx, %rax
    popq %rbx
    jmp 9f
8:
    movq %cr4, %rax
    orq $(1 << 18), %rax
    movq %rax, %cr4
    xorl %ecx, %ecx
    movl $7, %eax
    xorl %edx, %edx
    xsetbv
    xorl %eax, %eax
    jmp 9f
9:
    addq $2, 16(%rsp)
    addq $16, %rsp
    iretq

/* ------------------------------------------------------- AP trampoline
 * Copied to 0x8000 by the BSP (SIPI vector 0x08). Real mode -> protected
 * mode -> ap_pm32 in the image. */
.code16
.global ap_tramp_start
.global ap_tramp_end
ap_tramp_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (ap_tramp_gdtptr - ap_tramp_start + 0x8000)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $SEL_KCODE32, $ap_pm32
.balign 8
ap_tramp_gdtptr:
    .word gdt_end - gdt - 1
    .long gdt
ap_tramp_end:

.code64
