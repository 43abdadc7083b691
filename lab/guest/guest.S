/*
 * migcompat lab guest: a multiboot (v1) kernel that never stops dirtying RAM.
 *
 * Why: during postcopy the destination runs the guest before its RAM has arrived; each
 * first touch of a missing page faults, and the destination asks the source for it with
 * REQ_PAGES(_ID) on the return path. Writing one word per 4 KiB page across a window,
 * forever, keeps those faults (and the dirty-page stream during precopy) coming.
 *
 * Assembled with `as --32` (no gcc-multilib needed) and linked by `ld -m elf_i386`;
 * QEMU's -kernel loads the 32-bit ELF through its multiboot option ROM, in protected
 * mode with paging off, so linear = physical. WINDOW_START_MB / WINDOW_END_MB come
 * from --defsym. The serial port (COM1) gets a banner and one '.' per 16 laps: the lab
 * counts them on both sides at the end of a run to measure whether each guest executes.
 */
        .set MB_MAGIC, 0x1BADB002
        .set MB_FLAGS, 0
        .set COM1, 0x3F8

        .section .multiboot, "a"
        .align 4
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)

        .text
        .globl _start
_start:
        cli
        mov     $stack_top, %esp
        mov     $banner, %esi
        call    puts
        xor     %ebx, %ebx              /* lap counter, the value written */
lap:
        mov     $(WINDOW_START_MB << 20), %edi
1:
        mov     %ebx, (%edi)
        add     $4096, %edi
        cmp     $(WINDOW_END_MB << 20), %edi
        jb      1b
        inc     %ebx
        test    $0x0f, %ebx
        jnz     lap
        mov     $'.', %al
        call    putc
        jmp     lap

/* putc: %al to COM1 once the transmit holding register is empty (LSR bit 5). */
putc:
        push    %eax
        mov     $(COM1 + 5), %dx
2:
        in      %dx, %al
        test    $0x20, %al
        jz      2b
        pop     %eax
        mov     $COM1, %dx
        out     %al, %dx
        ret

/* puts: NUL-terminated string at %esi. */
puts:
        lodsb
        test    %al, %al
        jz      3f
        call    putc
        jmp     puts
3:
        ret

        .section .rodata
banner:
        .asciz  "migcompat-guest: writing RAM window\n"

        .bss
        .align 16
stack:
        .skip   16384
stack_top:
