"""Random .dockerignore pattern cases for fsutil-oracle (development tool).

    python3 patternmatcher-fuzz.py SEED COUNT > fuzz.json
    fsutil-oracle patterns < fuzz.json > fuzz.jsonl

Half the cases use pattern pieces of the first alphabet, half the second (Go regexp corners).
"""
import json, random, sys

ALPHA1 = ['a','b','/','*','?','[',']','^','-','\\','.','!','d','Q','E','p','L',':','{','}','(',')','|','$','+',' ','x','\n',b'\xff','é','0','7','w','A','z','_','**','**/','[a-c]','[^a]','[[:alpha:]]','\\Q','\\E','\\pL','\\x41','\ufeff','..','./']
PALPHA1 = ['a','b','/','x','.','*','?','[',']','^','-','\\','d','0','7','é','\n',' ',b'\xff',b'\xe2\x82','_','A','z','$','(','+','ab/','a/b/']
ALPHA2 = ['a','b','/','*','?','[',']','^','-','\\','|','{2}','{1,3}','{0}','{,2}','{01}','{2,}','{3,1}','{1001}','{','}','a|','|b','\\b','\\B','\\A','\\z','[\\d]','[[:^alpha:]]','\\PL','\\pN','\\x{41}','\\101','\\0','[a-]','[]','[^]a]','\\Q','\\E','**','**/','.', 'é', b'\xff', '\n', '$', '(', ')', ':', 'x', '0', '_', ' ', '[[:word:]]', '\\w', '\\S', '+']
PALPHA2 = ['a','b','/','x','.','*','?','[',']','^','-','\\','d','0','7','é','\n',' ',b'\xff','_','A','z','$','{','}','|','aa','ab/','a/b/','11','2']


def enc(parts):
    bs = b"".join(p if isinstance(p, bytes) else p.encode() for p in parts)
    try:
        return bs.decode()
    except UnicodeDecodeError:
        return {"hex": bs.hex()}


random.seed(int(sys.argv[1]))
n = int(sys.argv[2])
cases = []
for i in range(n):
    alpha, palpha = (ALPHA1, PALPHA1) if i % 2 == 0 else (ALPHA2, PALPHA2)
    pats = [enc([random.choice(alpha) for _ in range(random.randint(1, 7))]) for _ in range(random.randint(1, 3))]
    paths = [enc([random.choice(palpha) for _ in range(random.randint(0, 6))]) for _ in range(6)]
    cases.append({"name": f"fuzz/{i}", "patterns": pats, "paths": paths})
print(json.dumps(cases))
