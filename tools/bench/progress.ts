/** One progress line on stderr, rewritten in place on a terminal, every few seconds otherwise. */
export interface Progress {
  /** Prints a finished line (kept), e.g. a step's result. */
  note(line: string): void;
  /** Shows `status()` every second until the returned function is called. */
  track(status: () => string): () => void;
}

export function createProgress(stream: NodeJS.WriteStream = process.stderr): Progress {
  const tty = stream.isTTY === true;
  let live = false;
  const clear = () => {
    if (tty && live) stream.write("\r\x1b[K");
    live = false;
  };
  return {
    note(line) {
      clear();
      stream.write(`${line}\n`);
    },
    track(status) {
      let ticks = 0;
      const timer = setInterval(() => {
        ticks++;
        if (tty) {
          stream.write(`\r\x1b[K${status()}`);
          live = true;
        } else if (ticks % 5 === 0) {
          stream.write(`  ${status()}\n`);
        }
      }, 1000);
      timer.unref();
      return () => {
        clearInterval(timer);
        clear();
      };
    },
  };
}
