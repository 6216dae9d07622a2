/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_BASHREADLINE_H
#define __VIGIL_BASHREADLINE_H

#include "vigil.h"

/*
 * Bytes of a command line kept, NUL included.  A power of two: the BPF side
 * masks the record size with it for the verifier.  bcc keeps 80; pasted
 * one-liners are often longer, and the ring record is cut to the line's
 * length, so a large bound costs nothing for short lines.
 */
#define BASHREADLINE_LINE_SIZE 4096

/*
 * One line an interactive bash read with readline(): what the user typed
 * (or pasted), after readline's editing, before bash expands anything.
 * The header is the bash process.  `line` is the raw bytes, any encoding;
 * the ring record ends after its NUL, so it must stay the last member.  A
 * longer line is cut at BASHREADLINE_LINE_SIZE - 1 bytes with
 * VIGIL_F_TRUNCATED in hdr.flags.
 */
struct bashreadline_event {
	struct vigil_header hdr;
	char line[BASHREADLINE_LINE_SIZE];	/* last: cut short in the ring */
};

#endif /* __VIGIL_BASHREADLINE_H */
