// The lease fds a re-exec names for the new image's background fstat
// (src/state/fdPrescan.ts): the environment text, and what is refused.
import t from 'tap';
import { decodeFdRanges, encodeFdRanges } from '../src/state/fdPrescan.js';

t.test('ranges: sorted, distinct, runs joined; the text gives the fds back', async (t) => {
  t.equal(encodeFdRanges([12, 5, 6, 7, 9, 5, 10, 11]), '5-7,9-12');
  t.equal(encodeFdRanges([3]), '3');
  t.equal(encodeFdRanges([]), '');
  const many = Array.from({ length: 10000 }, (_, i) => i + 20);
  const text = encodeFdRanges([...many, 15000])!;
  t.equal(text, '20-10019,15000');
  t.same([...decodeFdRanges(text)!], [...many, 15000]);
  t.same([...decodeFdRanges('3,5-6')!], [3, 5, 6]);
});

t.test('too long for the environment: not passed (the new image does it all inline)', async (t) => {
  const every2nd = Array.from({ length: 20000 }, (_, i) => 3 + 2 * i);
  t.equal(encodeFdRanges(every2nd), null);
});

t.test('anything else is refused (nothing is then done in the background)', async (t) => {
  for (const bad of ['', 'x', '1', '2-5', '5-3', '5,5', '7,6', '3-4,4', '3,', ',3', '3--4', '-3', '3 4', '99999999999', '3-2147483648'])
    t.equal(decodeFdRanges(bad), null, JSON.stringify(bad));
});
